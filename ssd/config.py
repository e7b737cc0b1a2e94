"""Configuration: every key declared once (ssd.config_schema), YAML files override what they
change.

    cfg = load_config("configs/voc300.yaml", overrides=["solver.lr=0.002"])
    cfg.solver.lr           # attribute access
    cfg.to_dict()           # plain nested dict (stored in every checkpoint)
    cfg.dump()              # YAML text (a config file that load_config reads back)

Unknown keys, wrong types and values out of range are errors that name the key, where it came
from, and what was expected. The config is passed explicitly; there is no global config object.

Relative paths (data.root, model.pretrained, train.output_dir and `_base_`) are relative to the
config file that sets them; values no file sets (built-in defaults, `key=value` overrides, dict
configs) are relative to the working directory. A loaded config holds absolute paths, so the
copy stored in a checkpoint means the same folders from any working directory.

Configs stored in checkpoints carry a `version`; `load_checkpoint_config` migrates older ones
(renamed keys) and drops keys this version no longer knows, with a warning.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ssd.config_schema import (
    CONFIG_VERSION,
    KEYS,
    NumberList,
    Range,
    ResourceLimit,
    default_tree,
)
from ssd.errors import ConfigError  # raised here; importable from ssd.config as before

logger = logging.getLogger(__name__)

# The tables the loader checks against, derived from ssd.config_schema.KEYS (one row per key).
_DEFAULTS: dict[str, Any] = default_tree()
# Keys that take null, with the type they take when set.
_NULLABLE_TYPES: dict[str, type] = {key.name: key.value_type for key in KEYS if key.takes_null}
# Keys that also take a keyword (resolved when used) besides their type.
_KEYWORDS: dict[str, tuple[str, ...]] = {key.name: key.keywords for key in KEYS if key.keywords}
# Keys holding file or folder paths: relative values are resolved when the config is loaded.
PATH_KEYS = tuple(key.name for key in KEYS if key.path)
# Values of path keys that are keywords, not paths (model.pretrained: torchvision asks
# torchvision's weights API for the backbone's ImageNet file).
PATH_KEYWORDS: dict[str, tuple[str, ...]] = {key.name: key.path_keywords for key in KEYS if key.path}
_RANGES: dict[str, Range] = {key.name: key.allowed for key in KEYS if key.allowed is not None}
_RESOURCE_LIMITS: dict[str, ResourceLimit] = {key.name: key.limit for key in KEYS
                                              if key.limit is not None}
_NUMBER_LISTS: dict[str, NumberList] = {key.name: key.items for key in KEYS if key.items is not None}
_SET_KEYS = tuple(key.name for key in KEYS if key.image_sets)  # lists of [year, split] pairs
# The model.priors keys with one entry per feature map (ssd.priors.PRIOR_KEYS).
_PRIOR_LISTS = ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios")
# Sections that `null` sets back to their defaults (model.priors: null derives every prior key).
_NULL_RESETS: tuple[str, ...] = ("model.priors",)

CONFIGS_FOLDER = "configs"  # how commands and docs name the built-in configs: configs/voc300.yaml
# In a source checkout (run through PYTHONPATH, not installed) the configs sit beside ssd/.
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / CONFIGS_FOLDER


@dataclass(frozen=True)
class _Migration:
    """How a stored config of one version becomes the next: dotted keys renamed or removed."""

    renamed: Mapping[str, str]
    removed: tuple[str, ...] = ()


# version -> the step to version + 1. Version 1 (no `version` key) stored paths as written.
_MIGRATIONS: dict[int, _Migration] = {
    1: _Migration(renamed={}),
    2: _Migration(renamed={"test.conf_threshold": "test.score_threshold"}),
}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names the same key twice (`key`, at `first_line` and `line`, 1-based)."""

    def __init__(self, key: Any, first_line: int, node: yaml.Node):
        self.key, self.first_line, self.line = key, first_line, node.start_mark.line + 1
        super().__init__(problem=f"key {key!r} appears twice (lines {first_line} and {self.line})",
                         problem_mark=node.start_mark)


class StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last one
    without a word, so a second `solver:` block would silently replace the first). Keys that
    a `<<` merge brings in may still be overridden: that is what merging is for."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            _refuse_repeated_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def _refuse_repeated_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    first_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in first_lines:
                raise DuplicateKeyError(key, first_lines[key], key_node)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        first_lines[key] = key_node.start_mark.line + 1


def parse_yaml(text: str) -> Any:
    """YAML `text` parsed like yaml.safe_load, except that a key repeated in one mapping raises
    DuplicateKeyError (a yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 (a SafeLoader subclass)


class Config:
    """A loaded, validated config: a read-only nested view with attribute access.

    Every key of ssd.config_schema.KEYS is present: sections are Configs (``cfg.solver``,
    ``cfg.model.priors``) and leaves are plain values (``cfg.solver.lr`` a float,
    ``cfg.data.train_sets`` a list). ``cfg["solver"]``, ``"lr" in cfg.solver`` and
    ``cfg.solver.get("lr")`` work as on a dict. Build one with load_config,
    load_config_from_dict, load_checkpoint_config or merge_overrides; the package passes it
    explicitly (there is no global config).
    """

    def __init__(self, data: Mapping[str, Any]):
        for key, value in data.items():
            object.__setattr__(self, key, Config(value) if isinstance(value, Mapping) else value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Config is read-only; use load_config(..., overrides=[...])")

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """A deep plain-dict copy (safe to mutate)."""
        return {
            key: value.to_dict() if isinstance(value, Config) else copy.deepcopy(value)
            for key, value in self.__dict__.items()
        }

    def dump(self) -> str:
        """The config as YAML text: every key, with absolute paths and this config version.
        Written to a file, `load_config(path)` reads it back as an equal Config (as does
        `load_config_from_dict(parse_yaml(text))`); checkpoints store `to_dict()` instead,
        read back with `load_checkpoint_config`, which also migrates older versions."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()


def packaged_config(name: str) -> Path:
    """The config file `name` (e.g. "voc512.yaml") shipped with an installed package, found
    through importlib.resources (setup.py installs configs/*.yaml as ssd/configs/).

    Raises ConfigError when the package was not installed with its configs (e.g. run from a
    source checkout through PYTHONPATH: use the checkout's configs/ there).
    """
    from importlib import resources

    try:
        path = Path(str(resources.files("ssd.configs") / name))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(f"No config named {name!r} is installed with the ssd package (ssd/configs/); "
                          "install it with pip install . or pass the path of a config file")
    return path


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


def resolve_config_path(value: str | Path, folder: Path | None = None) -> tuple[Path, bool]:
    """A config file name as (path, is_builtin): the file when it exists (relative to `folder`,
    default the working directory), else the built-in config of that name, given as
    `voc300.yaml` or `configs/voc300.yaml`, so that --config and `_base_` work from any folder
    once the package is installed.

    Raises:
        ConfigError: no such file and no built-in config of that name (lists the built-in ones).
    """
    name = Path(value)
    path = name if folder is None else folder / name
    if path.is_file():
        return path, False
    builtin = builtin_config(name.name) if name.parent in (Path("."), Path(CONFIGS_FOLDER)) else None
    if builtin is not None:
        return builtin, True
    known = builtin_config_names()
    raise ConfigError(f"Config file not found: {path}"
                      + (f" (built-in configs: {', '.join(known)})" if known else ""))


def rebase_builtin_paths(data: dict[str, Any], builtin: Path, new_root: Path) -> None:
    """The PATH_KEYS values of `data`, read from the built-in config file `builtin`, moved from
    below the folder that holds its configs folder to the same place below `new_root`.

    A built-in config's own paths (`../data/...` relative to the configs folder) name user
    files: data/VOCdevkit, runs/voc300, ... as in a clone. Values elsewhere and keywords
    ("torchvision") are kept.
    """
    old_root = builtin.parent.parent
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        section: Any = data
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        value = section.get(leaf) if isinstance(section, dict) else None
        if not isinstance(value, str) or not Path(value).is_absolute():
            continue
        try:
            section[leaf] = str(new_root / Path(value).relative_to(old_root))
        except ValueError:  # not below old_root
            pass


def get_defaults() -> dict[str, Any]:
    """A fresh copy of the default config as a nested dict."""
    return copy.deepcopy(_DEFAULTS)


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] | None = None
) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides.

    Args:
        path: a YAML file holding a subset of the default keys. It may name a `_base_` file
            (relative to itself) whose values it builds on. Relative paths in it are relative
            to the file that sets them.
        overrides: strings like ``"solver.lr=0.002"``; values are parsed as YAML
            (``"model.priors.steps=[8,16]"``, ``"model.pretrained=null"``); relative paths are
            relative to the working directory.
    """
    config = get_defaults()
    if path is not None:
        _merge(config, _read_yaml_with_bases(Path(path)), source=str(path))
    _apply_overrides(config, overrides or ())
    return _finish(config)


def load_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Defaults merged with `data`, validated; relative paths are relative to the working
    directory."""
    config = get_defaults()
    data = copy.deepcopy(dict(data))
    _rename_deprecated_keys(data, source)
    _merge(config, data, source=source)
    return _finish(config)


def load_checkpoint_config(data: Mapping[str, Any], source: str = "a checkpoint") -> Config:
    """The config stored in a checkpoint, migrated from its `version` to this one.

    Renamed keys are moved; keys this version does not know are dropped with a logged warning
    (a checkpoint stays loadable), while wrong values still raise ConfigError.
    """
    data = copy.deepcopy(dict(data))
    version = data.pop("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"The config in {source} has version {version!r}; expected an int >= 1")
    renames = [rename for step in range(version, CONFIG_VERSION)
               for rename in _migrate(data, _MIGRATIONS[step])]
    if renames:
        logger.info("Migrated the config in %s from version %d to %d: renamed %s",
                    source, version, CONFIG_VERSION, ", ".join(renames))
    dropped = _drop_unknown_keys(data, _DEFAULTS)
    if dropped:
        newer = f" (it was written by config version {version})" if version > CONFIG_VERSION else ""
        logger.warning("Ignoring config keys in %s that this version does not know%s: %s",
                       source, newer, ", ".join(dropped))
    return load_config_from_dict(data, source=source)


def merge_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """A new config: `cfg` with `key=value` overrides applied."""
    config = cfg.to_dict()
    _apply_overrides(config, overrides)
    return _finish(config)


def _finish(config: dict[str, Any]) -> Config:
    """Remaining relative paths against the working directory, validation, the Config view."""
    _resolve_paths(config, Path.cwd())
    _validate(config)
    return Config(config)


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for name in dotted.split("."):
        value = value[name]
    return value


def _resolve_paths(config: dict[str, Any], base: Path) -> None:
    """Make the relative PATH_KEYS values present in `config` absolute against `base`."""
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        section: Any = config
        for name in parents:
            section = section.get(name) if isinstance(section, Mapping) else None
        if not isinstance(section, dict) or not isinstance(section.get(leaf), str):
            continue
        if section[leaf] in PATH_KEYWORDS[dotted]:
            continue
        path = Path(section[leaf]).expanduser()
        section[leaf] = os.path.normpath(path if path.is_absolute() else base / path)


def _migrate(data: dict[str, Any], step: _Migration) -> list[str]:
    """Apply one migration step to `data` in place; return the renames made ("old -> new")."""
    renames = []
    for old, new in step.renamed.items():
        value = _pop_dotted(data, old)
        if value is not _MISSING:
            _set_dotted(data, new, value)
            renames.append(f"{old} -> {new}")
    for old in step.removed:
        _pop_dotted(data, old)
    return renames


def _renamed_keys() -> dict[str, str]:
    """Every key a migration renamed (dotted) -> its name in this version."""
    renamed: dict[str, str] = {}
    for version in sorted(_MIGRATIONS):
        for old, new in _MIGRATIONS[version].renamed.items():
            renamed = {key: new if target == old else target for key, target in renamed.items()}
            renamed[old] = new
    return renamed


def _rename_deprecated_keys(data: dict[str, Any], source: str) -> None:
    """Move the keys of a user's config (a file, overrides, a dict) that were renamed to their
    new names in place, with a deprecation warning; setting both names is a ConfigError."""
    for old, new in _renamed_keys().items():
        value = _pop_dotted(data, old)
        if value is _MISSING:
            continue
        if _has_dotted(data, new):
            raise ConfigError(f"Config keys '{old}' and '{new}' (in {source}) are the same key "
                              f"('{old}' is its old name); keep '{new}'")
        logger.warning("Config key '%s' (in %s) is deprecated: it is now '%s'; rename it",
                       old, source, new)
        _set_dotted(data, new, value)


def _has_dotted(data: dict[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    section: Any = data
    for name in parents:
        section = section.get(name) if isinstance(section, dict) else None
    return isinstance(section, dict) and leaf in section


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    section = data
    for name in parents:
        section = section.setdefault(name, {})
    section[leaf] = value


_MISSING = object()


def _pop_dotted(data: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    section: Any = data
    for name in parents:
        section = section.get(name) if isinstance(section, dict) else None
    return section.pop(leaf, _MISSING) if isinstance(section, dict) else _MISSING


def _drop_unknown_keys(data: dict[str, Any], known: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Remove the keys of `data` that `known` lacks (recursively); return them dotted."""
    dropped = []
    for key in list(data):
        if key not in known:
            dropped.append(f"{prefix}{key}")
            del data[key]
        elif isinstance(known[key], dict) and isinstance(data[key], dict):
            dropped += _drop_unknown_keys(data[key], known[key], prefix=f"{prefix}{key}.")
    return dropped


def _read_yaml_with_bases(path: Path, naming: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in the YAML file `path`, merged over its `_base_` file(s).

    `_base_` is one file name or a list of them, merged in order (a later one overrides an
    earlier one, the file itself overrides them all). `naming` is the chain of files that led
    here, to refuse a cycle.
    """
    resolved = path.resolve()
    if resolved in naming:
        cycle = " -> ".join(str(step) for step in (*naming[naming.index(resolved):], resolved))
        raise ConfigError(f"Config files name each other as _base_ in a cycle: {cycle}")
    data = _read_yaml_mapping(path)
    _rename_deprecated_keys(data, str(path))
    _resolve_paths(data, path.absolute().parent)
    bases = _base_names(data.pop("_base_", None), path)
    merged: dict[str, Any] = {}
    for name in bases:
        try:
            base_path, builtin = resolve_config_path(name, folder=path.parent)
        except ConfigError as err:
            raise ConfigError(f"{err}; named as _base_ in {path}") from err
        base = _read_yaml_with_bases(base_path, (*naming, resolved))
        if builtin:
            rebase_builtin_paths(base, base_path, Path.cwd())
        _deep_update(merged, base)
    _deep_update(merged, data)
    return merged


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping in YAML file `path`; ConfigError when it is missing, not YAML, repeats a key
    or holds something else than a mapping."""
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = parse_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"Config file {path}, line {err.line}: key {err.key!r} is set twice "
                          f"in one mapping (first on line {err.first_line}); keep one") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def _base_names(value: Any, path: Path) -> list[str]:
    """The `_base_` value of the file `path` as a list of file names."""
    names = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"Config key '_base_' in {path} must be a config file name or a list of "
                          f"them (e.g. voc300.yaml or [base.yaml, classes.yaml]), got {value!r}")
    return names


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _merge(config: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Merge `update` into `config` in place, refusing keys the defaults do not have."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(_unknown_key_message(dotted, source, config, prefix))
        if isinstance(config[key], dict):
            if value is None and dotted in _NULL_RESETS:
                config[key] = copy.deepcopy(_lookup(_DEFAULTS, dotted))
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"Config key '{dotted}' (in {source}) must be a mapping of "
                    f"{sorted(config[key])}, got {value!r}"
                )
            _merge(config[key], value, source, prefix=f"{dotted}.")
        else:
            config[key] = _checked_value(dotted, config[key], value, source)


def _apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like key=value (e.g. solver.lr=0.002)")
        dotted, text = item.split("=", 1)
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"Override '{item}': value is not valid YAML: {err}") from err
        *parents, leaf = dotted.strip().split(".")
        nested: Any = value
        for name in reversed([*parents, leaf]):
            nested = {name: nested}
        source = f"override '{item}'"
        _rename_deprecated_keys(nested, source)
        _merge(config, nested, source=source)


def _unknown_key_message(dotted: str, source: str, level: Mapping[str, Any], prefix: str) -> str:
    valid = [f"{prefix}{name}" for name in level]
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"Unknown config key '{dotted}' in {source}{hint} Valid keys here: {', '.join(valid)}"


def _type_name(kind: type) -> str:
    return {float: "float", int: "int", bool: "bool", str: "str", list: "list"}.get(
        kind, kind.__name__
    )


def _as_float(value: Any) -> Any:
    """`value` as a float when it is an int or a string that parses as one (YAML 1.1 reads
    ``1e-3`` as a string), else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _checked_value(dotted: str, default: Any, value: Any, source: str) -> Any:
    """`value` if it has the type of `default` (int or a numeric string accepted for float;
    tuples as lists)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str) and value in _KEYWORDS.get(dotted, ()):
        return value
    expected = _NULLABLE_TYPES.get(dotted, type(default))
    if value is None and (dotted in _NULLABLE_TYPES or default is None):
        return None
    if expected is float:
        value = _as_float(value)
    is_bool_mismatch = (expected is bool) != isinstance(value, bool)
    if not isinstance(value, expected) or is_bool_mismatch:
        nullable = " or null" if dotted in _NULLABLE_TYPES else ""
        nullable += "".join(f" or {keyword!r}" for keyword in _KEYWORDS.get(dotted, ()))
        raise ConfigError(
            f"Config key '{dotted}' (in {source}) expects {_type_name(expected)}{nullable}, "
            f"got {type(value).__name__} {value!r}"
        )
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"Config key '{dotted}' (in {source}) expects a finite number, got {value!r}")
    return value


def _validate(config: dict[str, Any]) -> None:
    """Checks that types alone cannot express: choices, ranges, list forms, cross-key rules."""
    if config["version"] != CONFIG_VERSION:
        raise ConfigError(f"Config key 'version' is {config['version']}; this version reads "
                          f"{CONFIG_VERSION} (older configs are migrated only when read from "
                          "checkpoints); remove the key from the file")
    for key in KEYS:
        allowed = key.allowed_choices()
        if allowed is None:
            continue
        dotted, value = key.name, _lookup(config, key.name)
        if value is None and key.takes_null:
            continue
        if value not in allowed:
            raise ConfigError(f"Config key '{dotted}' must be one of {', '.join(allowed)}, got {value!r}")
    for dotted, allowed in _RANGES.items():
        value = _lookup(config, dotted)
        if value is None or value in _KEYWORDS.get(dotted, ()):  # a nullable key left off, a keyword
            continue
        if not allowed.contains(value):
            raise ConfigError(f"Config key '{dotted}' must be {allowed.describe()}, got {value!r}")
    for dotted, limit in _RESOURCE_LIMITS.items():
        _check_resource_limit(dotted, _lookup(config, dotted), limit)
    for dotted, rule in _NUMBER_LISTS.items():
        _check_number_list(config, dotted, rule)
    _check_aspect_ratios(config["model"]["priors"]["aspect_ratios"])
    for dotted in _SET_KEYS:
        _check_image_sets(dotted, _lookup(config, dotted))
    _check_cross_keys(config)


def _check_resource_limit(dotted: str, value: Any, limit: ResourceLimit) -> None:
    """Refuse a value of resource key `dotted` above `limit`, saying what the bound protects."""
    if value is None or value in _KEYWORDS.get(dotted, ()):
        return
    if value > limit.maximum:
        raise ConfigError(f"Config key '{dotted}' is {value}: at most {limit.maximum} "
                          f"{limit.resource} ({limit.reason(value)})")


def _check_number_list(config: dict[str, Any], dotted: str, rule: NumberList) -> None:
    """Convert the items of list key `dotted` to `rule.kind` in place, or raise ConfigError."""
    *parents, leaf = dotted.split(".")
    section = _lookup(config, ".".join(parents))
    values = section[leaf]
    if values is None:
        return
    shape = f"{rule.length} " if rule.length else ""
    wanted = f"a list of {shape}{_type_name(rule.kind)}s" + (
        f" {rule.allowed.describe()}" if rule.allowed else "")
    if rule.length is not None and len(values) != rule.length:
        raise ConfigError(f"Config key '{dotted}' must be {wanted}, got {values!r} "
                          f"({len(values)} values)")
    converted = []
    for index, item in enumerate(values):
        number = _as_float(item) if rule.kind is float else item
        if not isinstance(number, rule.kind) or isinstance(number, bool):
            raise ConfigError(f"Config key '{dotted}' must be {wanted}; item {index} is "
                              f"{type(item).__name__} {item!r}")
        if not math.isfinite(number):
            raise ConfigError(f"Config key '{dotted}' must be {wanted} (finite numbers); item "
                              f"{index} is {item!r}")
        if rule.allowed is not None and not rule.allowed.contains(number):
            raise ConfigError(f"Config key '{dotted}' must be {wanted}; item {index} is {item!r}")
        converted.append(number)
    section[leaf] = converted


def _check_aspect_ratios(ratios: list | None) -> None:
    for index, item in enumerate(ratios or ()):
        if not isinstance(item, list) or not all(
                isinstance(_as_float(r), float) and 0 < _as_float(r) < math.inf for r in item):
            raise ConfigError("Config key 'model.priors.aspect_ratios' must be one list of "
                              f"positive numbers per feature map (finite, e.g. [[2], [2, 3]]); item "
                              f"{index} is {item!r}")


def _check_image_sets(dotted: str, sets: list) -> None:
    """`sets` must be [[year, split], ...]; a flat [year, split] is the common mistake."""
    for item in sets:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(part, (str, int)) and not isinstance(part, bool) for part in item)):
            raise ConfigError(f"Config key '{dotted}' must be a list of [year, split] pairs, e.g. "
                              f"[[2007, trainval], [2012, trainval]]; got {sets!r} (item {item!r})")


def _check_cross_keys(config: dict[str, Any]) -> None:
    priors = config["model"]["priors"]
    lengths = {name: len(priors[name]) for name in _PRIOR_LISTS
               if priors[name] is not None}  # null: derived, one per feature map
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            "Config keys model.priors.{feature_maps, steps, min_sizes, max_sizes, aspect_ratios} "
            f"must have one entry per feature map; got lengths {lengths}"
        )
    _check_fine_tuning_keys(config["model"])
    names = config["data"]["class_names"]
    if names is not None and len(names) + 1 != config["model"]["num_classes"]:
        raise ConfigError(
            f"Config key 'model.num_classes' is {config['model']['num_classes']} but "
            f"data.class_names lists {len(names)} classes; expected num_classes = "
            f"{len(names) + 1} (classes + background)"
        )
    _check_distinct_class_names(names)
    _check_patience(config["train"])


def _check_distinct_class_names(names: list | None) -> None:
    """data.class_names must name each class once (labels are matched by name)."""
    for label, name in enumerate(names or []):
        if name in names[:label]:
            raise ConfigError(f"Config key 'data.class_names' lists class '{name}' twice (labels "
                              f"{names.index(name)} and {label}); class names must be distinct")


def _check_patience(train: dict[str, Any]) -> None:
    """train.patience counts evaluations, so it needs train.eval_period."""
    if train["patience"] is not None and not train["eval_period"]:
        raise ConfigError(f"Config key 'train.patience' is {train['patience']}: it counts "
                          "evaluations without a better mAP, but train.eval_period is 0 (no "
                          "evaluation); set train.eval_period or train.patience=null")


def _check_fine_tuning_keys(model: dict[str, Any]) -> None:
    """model.class_map must map names to names, model.freeze must list module-name prefixes
    (whether they match the model is checked when it is built: ssd.engine.freeze)."""
    class_map = model["class_map"]
    if class_map is not None and not all(isinstance(new, str) and isinstance(old, str)
                                         for new, old in class_map.items()):
        raise ConfigError(f"Config key 'model.class_map' must map new class names to source class "
                          f"names, e.g. {{lorry: truck}}; got {class_map!r}")
    freeze = model["freeze"]
    if not all(isinstance(prefix, str) and prefix for prefix in freeze):
        raise ConfigError(f"Config key 'model.freeze' must be a list of module-name prefixes, e.g. "
                          f"[vgg] or [base, extras]; got {freeze!r}")
