"""Loading a pretrained model or tokenizer by name or folder, with errors a user can act on.

transformers answers a name that is neither a local folder nor in the local cache, while the hub
cannot be reached, with an OSError traceback, and a repository whose config maps its classes to
its own Python files (`auto_map`) with a ValueError asking for `trust_remote_code=True`. Both
become a PretrainedError naming the model and what to do.

Custom code is the one place where loading a model runs code that came with it. mlrec passes
`trust_remote_code=True` only when the person running the command asked for it (`mlrec ...
--trust-remote-code`); a config, a run directory or an export never turns it on (see
`mlrec.config`), so an artifact cannot decide by itself to run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REMOTE_CODE_FLAG = "--trust-remote-code"


class PretrainedError(RuntimeError):
    """A model or tokenizer that could not be loaded, with what to do about it."""


def from_pretrained(
    loader: Any, name_or_path: str | Path, what: str, trust_remote_code: bool, **kwargs: Any
) -> Any:
    """`loader.from_pretrained(name_or_path, ...)`, e.g. loader=AutoModel, what="model"."""
    name = str(name_or_path)
    try:
        return loader.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise PretrainedError(_damaged(name, what, err)) from None
        raise PretrainedError(
            f"the {what} {name} ships its own Python code (auto_map in its config), which mlrec "
            f"runs only when you pass {REMOTE_CODE_FLAG} on the command line; do that only if "
            "you trust where it came from"
        ) from None
    except OSError as err:
        raise PretrainedError(_not_found(name, what, err)) from None
    except TypeError:
        raise  # an argument this architecture does not take: the caller retries without it
    except Exception as err:  # a damaged file: tokenizers and safetensors raise their own types
        raise PretrainedError(_damaged(name, what, err)) from None


def _damaged(name: str, what: str, err: Exception) -> str:
    return (
        f"the {what} in {name} cannot be loaded ({type(err).__name__}: {_first_line(err)}); "
        "is a file in it damaged or cut short?"
    )


def _not_found(name: str, what: str, err: OSError) -> str:
    path = Path(name).expanduser()
    if path.is_dir():  # a folder, but not one transformers can read
        return f"the {what} folder {name} cannot be loaded: {err}"
    if name.startswith(("/", "./", "../", "~")) or path.exists():
        return f"the {what} {name} is not a folder: give a folder holding a saved {what}"
    return (
        f"the {what} {name!r} is neither a local folder nor in the Hugging Face cache, and the "
        "hub could not be reached (offline, or HF_HUB_OFFLINE=1). Download it where the hub is "
        f"reachable (`hf download {name}`, then copy ~/.cache/huggingface to this machine), or "
        f"point model.name_or_path at a folder holding it (transformers: {_first_line(err)})"
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
