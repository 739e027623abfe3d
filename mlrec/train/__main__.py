"""`python -m mlrec.train` / `accelerate launch -m mlrec.train --config C [key=value ...]`."""

import sys

from mlrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
