"""One logger setup for every entry point: messages from the main process only."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    """INFO on the main process (RANK 0 or unlaunched), warnings only on the others."""
    main = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=level if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("httpx", "urllib3", "torch.distributed", "accelerate", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
