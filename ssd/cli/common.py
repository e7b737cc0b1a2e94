"""Plumbing shared by the commands: clean errors, logging, --version, device and config choice."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Iterable, NoReturn

import ssd
from ssd.config import (
    Config,
    load_config,
    load_config_from_dict,
    merge_overrides,
    rebase_builtin_paths,
    resolve_config_path,
)

# Errors that are the user's input, not a bug: printed as one clear message, exit status 2.
USER_ERRORS = (FileNotFoundError, ValueError, KeyError, NotADirectoryError, IsADirectoryError)
EXIT_USER_ERROR = 2


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Call `main()` (which parses sys.argv) with the library's log messages shown as plain
    lines, and exit with its status; user errors become `error: ...` on stderr, exit status 2,
    and so do file-system errors (permission denied, disk full, file too large, read-only
    file system): `error: <what failed>: <path>: <reason>`.
    Freed memory stays in the process for reuse (`ssd.system.keep_freed_memory`)."""
    from ssd.fileio import describe_os_error
    from ssd.system import keep_freed_memory

    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main()
    except OSError as err:  # before USER_ERRORS, which hold some of its subclasses
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code or 0)


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version`: print the package version and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {ssd.__version__}")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """`--weights` (required) and `--config` of the commands that load a trained model to
    convert or time it (ssd-export, ssd-benchmark)."""
    parser.add_argument("--weights", required=True, help="checkpoint or classic state_dict")
    parser.add_argument("--config", help="YAML config, used when the weights carry none "
                                         "(default: the built-in SSD300 VOC model)")


def pick_device(requested: str | None) -> str:
    """`--device` as given (error when CUDA is asked for but missing), else cuda when present."""
    from ssd.precision import resolve_device

    return str(resolve_device(requested))


# ------------------------------------------------------------------------ built-in configs
def load_cli_config(value: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config a command's --config names (see `resolve_config_path`), then `overrides`.

    A built-in config's own paths (data.root, model.pretrained, train.output_dir: `../data/...`
    relative to the configs folder) are user files, so they are taken relative to the working
    directory instead of the installed package: data/VOCdevkit, runs/voc300, ... as in a clone.
    """
    path, builtin = resolve_config_path(value)
    if not builtin:
        return load_config(path, overrides=overrides)
    data = load_config(path).to_dict()
    rebase_builtin_paths(data, path, Path.cwd())
    return merge_overrides(load_config_from_dict(data, source=str(path)), overrides)
