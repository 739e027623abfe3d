"""`python -m mlrec STAGE ...`, the same as the `mlrec` command; under accelerate:
`accelerate launch -m mlrec train --config C [key=value ...]`."""

from mlrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
