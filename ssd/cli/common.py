"""Plumbing shared by the commands: clean errors, logging, --version, device and config choice."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Iterable, NoReturn

import ssd
from ssd.config import (
    PATH_KEYS,
    Config,
    ConfigError,
    load_config,
    load_config_from_dict,
    merge_overrides,
    packaged_config,
)

# Errors that are the user's input, not a bug: printed as one clear message, exit status 2.
USER_ERRORS = (FileNotFoundError, ValueError, KeyError, NotADirectoryError, IsADirectoryError)
EXIT_USER_ERROR = 2
CONFIGS_FOLDER = "configs"  # how commands and docs name the built-in configs: configs/voc300.yaml
# In a source checkout (run through PYTHONPATH, not installed) the configs sit beside ssd/.
CHECKOUT_CONFIGS = Path(ssd.__file__).resolve().parents[1] / CONFIGS_FOLDER


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


def pick_device(requested: str | None) -> str:
    """`--device` as given (error when CUDA is asked for but missing), else cuda when present."""
    from ssd.precision import resolve_device

    return str(resolve_device(requested))


# ------------------------------------------------------------------------ built-in configs
def builtin_config(name: str) -> Path | None:
    """The config file `name` shipped with the package (installed: ssd/configs/; source
    checkout: configs/ beside ssd/), or None when there is none of that name."""
    try:
        return packaged_config(name)
    except ConfigError:
        path = CHECKOUT_CONFIGS / name
        return path if path.is_file() else None


def builtin_config_names() -> list[str]:
    """The names of the configs shipped with the package, sorted."""
    from importlib import resources

    try:
        files = [Path(entry.name) for entry in resources.files("ssd.configs").iterdir()]
    except ModuleNotFoundError:
        files = list(CHECKOUT_CONFIGS.glob("*")) if CHECKOUT_CONFIGS.is_dir() else []
    return sorted(path.name for path in files if path.suffix == ".yaml")


def resolve_config_path(value: str | Path) -> tuple[Path, bool]:
    """A --config value as (path, is_builtin): the file when it exists (relative to the working
    directory), else the built-in config of that name, given as `voc300.yaml` or
    `configs/voc300.yaml`, so the documented commands work from any folder once installed.

    Raises:
        ConfigError: no such file and no built-in config of that name (lists the built-in ones).
    """
    path = Path(value)
    if path.is_file():
        return path, False
    builtin = builtin_config(path.name) if path.parent in (Path("."), Path(CONFIGS_FOLDER)) else None
    if builtin is not None:
        return builtin, True
    known = builtin_config_names()
    raise ConfigError(f"Config file not found: {value}"
                      + (f" (built-in configs: {', '.join(known)})" if known else ""))


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
    _rebase_paths(data, path.parent.parent, Path.cwd())
    return merge_overrides(load_config_from_dict(data, source=str(path)), overrides)


def _rebase_paths(data: dict, old_root: Path, new_root: Path) -> None:
    """PATH_KEYS values of `data` that lie below `old_root` moved to the same place below
    `new_root`; other values (elsewhere, keywords like "torchvision") are kept."""
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        section = data
        for name in parents:
            section = section.get(name, {})
        value = section.get(leaf)
        if not isinstance(value, str) or not Path(value).is_absolute():
            continue
        try:
            section[leaf] = str(new_root / Path(value).relative_to(old_root))
        except ValueError:  # not below old_root
            pass
