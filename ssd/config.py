"""Configuration: every default in one place, YAML files override what they change.

    cfg = load_config("configs/voc300.yaml", overrides=["solver.lr=0.002"])
    cfg.solver.lr           # attribute access
    cfg.to_dict()           # plain nested dict
    cfg.dump()              # YAML text (stored in every checkpoint)

Unknown keys and wrong types are errors that name the key, where it came from, and what was
expected. The config is passed explicitly; there is no global config object.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# The defaults reproduce SSD300 on PASCAL VOC07+12 (DESIGN.md, "Facts to build on").
_DEFAULTS: dict[str, Any] = {
    "model": {
        "backbone": "vgg16",  # see ssd.modeling.BACKBONES
        "num_classes": 21,  # foreground classes + 1 background
        "image_size": 300,
        # Backbone weights: vgg16: a reduced-fc VGG16 file; mobilenet_v3_large / resnet50: a
        # torchvision ImageNet state_dict file or "torchvision" (torch hub folder); null: scratch.
        "pretrained": None,
        "batch_norm": True,  # ssd7 only
        "channels": None,  # ssd7 only: the 7 block widths (null: the seed's 32-48-64-64-48-48-32)
        "priors": {
            "feature_maps": [38, 19, 10, 5, 3, 1],
            "steps": [8, 16, 32, 64, 100, 300],
            "min_sizes": [30, 60, 111, 162, 213, 264],
            "max_sizes": [60, 111, 162, 213, 264, 315],
            "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            "clip": True,
        },
        "variances": [0.1, 0.2],
    },
    "data": {
        "format": "voc",  # voc | coco | shapes
        "root": "data/VOCdevkit",
        "train_sets": [["2007", "trainval"], ["2012", "trainval"]],
        "test_sets": [["2007", "test"]],
        "class_names": None,  # null: the 20 PASCAL VOC classes (COCO: from the JSON)
        "keep_difficult": False,
        "keep_empty": False,  # keep training images without objects
        "skip_bad": False,  # skip unreadable files instead of stopping
        "coco": {
            "train_annotations": "annotations/instances_train2017.json",
            "train_images": "train2017",
            "test_annotations": "annotations/instances_val2017.json",
            "test_images": "val2017",
        },
        "shapes": {  # the synthetic data set, generated under `root` on first use
            "num_train": 2000,
            "num_test": 300,
            "image_size": 300,
            "seed": 0,
        },
        "mean": [104, 117, 123],  # BGR
        "augment": True,  # training augmentation (SSDAugmentation) on/off; its stages:
        "augmentation": {
            "photometric": True,  # brightness, contrast, saturation, hue, channel swap
            "max_expand": 4.0,  # zoom-out up to this ratio (1: none)
            "crop": True,  # min-IoU random crop
            "mirror": True,  # horizontal mirror
        },
        "num_workers": 4,
        "pin_memory": True,
    },
    "loss": {
        "name": "multibox",  # multibox | focal
        "iou_threshold": 0.5,
        "neg_pos_ratio": 3,
        "loc_loss": "smooth_l1",  # smooth_l1 | l1
        "loc_weight": 1.0,
        "alpha": 0.25,  # focal only
        "gamma": 2.0,  # focal only
    },
    "solver": {
        "batch_size": 32,  # global batch (split across processes under DDP)
        "optimizer": "sgd",  # sgd | adamw
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "max_iter": 120000,
        "schedule": "step",  # step (x gamma at lr_steps) | cosine (to 0 at max_iter)
        "lr_steps": [80000, 100000],
        "gamma": 0.1,
        "warmup_iters": 500,
        "warmup_factor": 1.0 / 3,
    },
    "train": {
        "seed": 0,
        "amp": False,
        "channels_last": False,
        "log_period": 20,
        "checkpoint_period": 5000,
        "keep_checkpoints": 3,
        "eval_period": 10000,  # 0 disables periodic evaluation
        "output_dir": "runs/ssd",
    },
    "test": {
        "conf_threshold": 0.01,
        "nms_threshold": 0.45,
        "top_k": 200,
        "candidates_per_class": 400,
        "batch_size": 8,
        "metric": "voc07",  # voc07 | voc10 | coco
    },
}

# Keys whose default is null, with the type they take when set.
_NULLABLE_TYPES: dict[str, type] = {
    "model.pretrained": str,
    "data.class_names": list,
    "model.channels": list,
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("voc", "coco", "shapes"),
    "loss.name": ("multibox", "focal"),
    "loss.loc_loss": ("smooth_l1", "l1"),
    "solver.optimizer": ("sgd", "adamw"),
    "solver.schedule": ("step", "cosine"),
    "test.metric": ("voc07", "voc10", "coco"),
}


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message says which and what was expected."""


class Config:
    """Nested, attribute-accessible view of a config dictionary."""

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
        """The config as YAML text; `load_config_from_dict(yaml.safe_load(text))` restores it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()


def get_defaults() -> dict[str, Any]:
    """A fresh copy of the default config as a nested dict."""
    return copy.deepcopy(_DEFAULTS)


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] | None = None
) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides.

    Args:
        path: a YAML file holding a subset of the default keys. It may name a `_base_` file
            (relative to itself) whose values it builds on.
        overrides: strings like ``"solver.lr=0.002"``; values are parsed as YAML
            (``"model.priors.steps=[8,16]"``, ``"model.pretrained=null"``).
    """
    config = get_defaults()
    if path is not None:
        _merge(config, _read_yaml_with_bases(Path(path)), source=str(path))
    _apply_overrides(config, overrides or ())
    _validate(config)
    return Config(config)


def load_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Defaults merged with `data` (e.g. the config stored in a checkpoint), validated."""
    config = get_defaults()
    _merge(config, dict(data), source=source)
    _validate(config)
    return Config(config)


def merge_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """A new config: `cfg` with `key=value` overrides applied."""
    config = cfg.to_dict()
    _apply_overrides(config, overrides)
    _validate(config)
    return Config(config)


def class_names_of(cfg: Config) -> list[str]:
    """Foreground class names of the configured data set (VOC's 20 when not given)."""
    names = cfg.data.class_names
    return list(names) if names is not None else list(VOC_CLASSES)


def _read_yaml_with_bases(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged = _read_yaml_with_bases(path.parent / base)
    _deep_update(merged, data)
    return merged


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
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"Override '{item}': value is not valid YAML: {err}") from err
        *parents, leaf = dotted.strip().split(".")
        nested: Any = value
        for name in reversed([*parents, leaf]):
            nested = {name: nested}
        _merge(config, nested, source=f"override '{item}'")


def _unknown_key_message(dotted: str, source: str, level: Mapping[str, Any], prefix: str) -> str:
    valid = [f"{prefix}{name}" for name in level]
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"Unknown config key '{dotted}' in {source}{hint} Valid keys here: {', '.join(valid)}"


def _type_name(kind: type) -> str:
    return {float: "float", int: "int", bool: "bool", str: "str", list: "list"}.get(
        kind, kind.__name__
    )


def _checked_value(dotted: str, default: Any, value: Any, source: str) -> Any:
    """`value` if it has the type of `default` (int accepted for float; tuples as lists)."""
    if isinstance(value, tuple):
        value = list(value)
    expected = _NULLABLE_TYPES.get(dotted, type(default))
    if value is None and (dotted in _NULLABLE_TYPES or default is None):
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    is_bool_mismatch = (expected is bool) != isinstance(value, bool)
    if not isinstance(value, expected) or is_bool_mismatch:
        nullable = " or null" if dotted in _NULLABLE_TYPES else ""
        raise ConfigError(
            f"Config key '{dotted}' (in {source}) expects {_type_name(expected)}{nullable}, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _validate(config: dict[str, Any]) -> None:
    """Checks across keys that types alone cannot express."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        if config[section][key] not in choices:
            raise ConfigError(
                f"Config key '{dotted}' must be one of {', '.join(choices)}, "
                f"got {config[section][key]!r}"
            )
    priors = config["model"]["priors"]
    lengths = {name: len(priors[name]) for name in
               ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios")}
    if len(set(lengths.values())) != 1:
        raise ConfigError(
            "Config keys model.priors.{feature_maps, steps, min_sizes, max_sizes, aspect_ratios} "
            f"must have one entry per feature map; got lengths {lengths}"
        )
    names = config["data"]["class_names"]
    if names is not None and len(names) + 1 != config["model"]["num_classes"]:
        raise ConfigError(
            f"Config key 'model.num_classes' is {config['model']['num_classes']} but "
            f"data.class_names lists {len(names)} classes; expected num_classes = "
            f"{len(names) + 1} (classes + background)"
        )
    if config["solver"]["batch_size"] < 1:
        raise ConfigError(f"Config key 'solver.batch_size' must be >= 1, got "
                          f"{config['solver']['batch_size']}")
