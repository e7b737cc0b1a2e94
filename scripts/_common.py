"""Shared command-line plumbing of the scripts: import path, device choice, clean errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a clone without installing

# Errors that are the user's input, not a bug: printed as one clear message, exit status 2.
USER_ERRORS = (FileNotFoundError, ValueError, KeyError, NotADirectoryError, IsADirectoryError)


def pick_device(requested: str | None) -> str:
    """`--device` as given (error when CUDA is asked for but missing), else cuda when present."""
    from ssd.precision import resolve_device

    return str(resolve_device(requested))


def run_cli(main) -> None:
    """Call `main()` with the library's log messages shown as plain lines; user errors become
    `error: ...` on stderr with exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main()
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
