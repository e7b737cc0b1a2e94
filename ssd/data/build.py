"""The one place that reads `cfg.data` to build data sets and transforms.

    ds = build_dataset(cfg, train=True)       # VOCDataset, COCODataset or YOLODataset, no transform
    transform = build_transform(cfg, train=True)
    loader = make_train_loader(ds, transform, batch_size, ...)

Formats (cfg.data.format):
    voc     cfg.data.root is a VOCdevkit; cfg.data.train_sets / test_sets list (year, split).
            Or a folder with Annotations/ + JPEGImages/ (or annotations/ + images/), or of images
            beside their XML files (ssd.data.voc_layout): its ImageSets/Main/<split>.txt files
            named by the sets' splits, else data.split_dir/{train,test}.txt
            (ssd.data.run_config.record_split writes them for a training run), else the
            data.val_fraction split.
    coco    cfg.data.root holds cfg.data.coco.{train,test}_{annotations,images}.
    yolo    cfg.data.root holds images/<split>/, labels/<split>/ and cfg.data.yolo.names_file;
            the splits are cfg.data.yolo.{train,test}_split.
    shapes  the synthetic set under cfg.data.root/VOCshapes, generated for training on first
            use (or when cfg.data.shapes changed) with cfg.data.shapes; evaluation never
            generates it. Always read as the ("shapes", "trainval") and ("shapes", "test")
            splits, whatever train_sets / test_sets say.

The class count must agree with the model: model.num_classes = len(class names) + 1.
`class_names_for(cfg)` is the one rule for a config's class names; `with_class_names(cfg, ds)`
(ssd.data.run_config) writes the names a data set read from its files (COCO categories, a YOLO
data.yaml or classes.txt) into data.class_names, so that the config a checkpoint stores names
its classes.

This module never imports ssd.config: config validation reads DATASET_BUILDERS from here (see
ssd.config_schema), so the functions that derive a new config live in ssd.data.run_config.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable

from ssd.commands import command
from ssd.data.coco import COCODataset
from ssd.data.common import DataError, DetectionDataset
from ssd.data.shapes import SHAPES_CLASSES, make_shapes, read_shapes_settings, shapes_settings
from ssd.data.transforms import BaseTransform, SSDAugmentation
from ssd.data.voc import VOC_CLASSES, VOCDataset, VOCSplit
from ssd.data.voc_layout import (
    VOCFolder,
    annotated_class_names,
    find_voc_folder,
    folder_split,
    listed_split,
    refuse_empty_folder,
)
from ssd.data.yolo import TEST_SPLIT_KEY, TRAIN_SPLIT_KEY, YOLODataset, data_yaml_split
from ssd.errors import ConfigError

logger = logging.getLogger(__name__)

# Class names of the formats whose classes are fixed (COCO's and YOLO's come from their files).
BUILTIN_CLASS_NAMES: dict[str, tuple[str, ...]] = {"voc": VOC_CLASSES, "shapes": SHAPES_CLASSES}

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock on `path` (POSIX); a no-op where fcntl does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shapes(root: str | Path, num_train: int, num_test: int, image_size: int,
                  seed: int) -> bool:
    """Generate the shapes data set under `root` unless one with these settings is there.

    Processes that call this together (DDP ranks) take turns: the first generates, the
    others then find the finished set.

    Returns True if it was (re)generated (and logs so).

    Raises:
        DataError: root/VOCshapes exists but was not written by the generator (see make_shapes).
    """
    wanted = shapes_settings(num_train, num_test, image_size, seed)
    with _file_lock(Path(root) / ".VOCshapes.lock"):
        found = read_shapes_settings(root)
        if found == wanted:
            return False
        why = "not found" if found is None else f"settings changed (was {found})"
        logger.info("shapes data set under %s: %s; generating %d train + %d test images of %d px "
                    "(seed %d)...", root, why, num_train, num_test, image_size, seed)
        make_shapes(root, num_train, num_test, image_size, seed, progress=True)
    logger.info("wrote %s", Path(root) / "VOCshapes")
    return True


def configured_class_names(cfg) -> list[str] | None:
    """data.class_names when set, else the built-in classes of data.format (VOC's 20, the
    shapes' 6), else None (COCO: the annotation file names them)."""
    if cfg.data.class_names is not None:
        return list(cfg.data.class_names)
    builtin = BUILTIN_CLASS_NAMES.get(cfg.data.format)
    return list(builtin) if builtin is not None else None


def class_names_for(cfg) -> list[str]:
    """Foreground class names in label order, for a model without its data set at hand:
    `configured_class_names` when they fit model.num_classes, else generic class_<label> names
    (e.g. a COCO model, whose names live in the annotation file)."""
    names = known_class_names(cfg)
    if names is not None:
        return names
    return [f"class_{label}" for label in range(cfg.model.num_classes - 1)]


def known_class_names(cfg) -> list[str] | None:
    """The foreground class names of `cfg`'s model when the config names them
    (`configured_class_names` of the model's class count), else None: the model's classes are
    known only by their labels (e.g. a YOLO or COCO model trained before checkpoints stored
    their data set's names)."""
    names = configured_class_names(cfg)
    return names if names is not None and len(names) == cfg.model.num_classes - 1 else None


def _voc(cfg, train: bool) -> VOCDataset:
    data = cfg.data
    names = configured_class_names(cfg)
    sets = data.train_sets if train else data.test_sets
    folder = find_voc_folder(data.root)
    if folder is not None:
        sets = _folder_sets(cfg, folder, sets, train)
        if data.class_names is None:  # a folder of one's own: its XML files name the classes
            names = annotated_class_names(folder)
            logger.info("VOC %s: class names from its XML files: %s (set data.class_names for "
                        "another order)", folder.root, names)
    else:
        refuse_empty_folder(data.root)
    return VOCDataset(data.root, sets, class_names=names, keep_difficult=data.keep_difficult,
                      keep_empty=data.keep_empty or not train, skip_bad=data.skip_bad)


def _folder_sets(cfg, folder: VOCFolder, sets: list, train: bool) -> list[VOCSplit]:
    """The splits of a VOC folder outside the VOCdevkit layout: its ImageSets/Main files named
    by the (year, split) pairs' splits, else the train or test part of its split."""
    if folder.has_split_files:
        split_names = dict.fromkeys(str(split) for _, split in sets)  # in order, once each
        return [listed_split(folder, name) for name in split_names]
    name = "train" if train else "test"
    return [folder_split(folder, name, cfg.data.val_fraction, cfg.data.split_dir)]


def _shapes(cfg, train: bool) -> VOCDataset:
    data = cfg.data
    shapes = data.shapes
    if train:
        ensure_shapes(data.root, shapes.num_train, shapes.num_test, shapes.image_size, shapes.seed)
    else:
        _require_shapes(data.root, shapes)
    names = configured_class_names(cfg)
    if names != list(SHAPES_CLASSES):
        raise ConfigError(f"data.class_names {names} do not match the shapes data set's classes "
                          f"{list(SHAPES_CLASSES)}; set data.class_names to those (or null)")
    sets = [("shapes", "trainval" if train else "test")]
    return VOCDataset(data.root, sets, class_names=names, keep_difficult=data.keep_difficult,
                      keep_empty=data.keep_empty or not train, skip_bad=data.skip_bad)


def _require_shapes(root: str, shapes) -> None:
    """Evaluation reads the shapes set training wrote; it never generates one."""
    wanted = shapes_settings(shapes.num_train, shapes.num_test, shapes.image_size, shapes.seed)
    found = read_shapes_settings(root)
    if found == wanted:
        return
    folder = Path(root) / "VOCshapes"
    state = "does not exist" if found is None else f"was made with other settings ({found})"
    raise DataError(
        f"No shapes data set with data.shapes={dict(shapes.to_dict())} under {folder}: it {state}. "
        f"Evaluation does not generate data sets: make it with {command('ssd-make-shapes')} "
        f"--root {root} --num-train {shapes.num_train} --num-test {shapes.num_test} --image-size "
        f"{shapes.image_size} --seed {shapes.seed}, or train with this config first "
        f"({command('ssd-train')} --config ...), which generates it",
        "missing data set", folder)


def _coco(cfg, train: bool) -> COCODataset:
    data = cfg.data
    root = Path(data.root)
    split = "train" if train else "test"
    dataset = COCODataset(root / data.coco[f"{split}_annotations"],
                          root / data.coco[f"{split}_images"],
                          skip_bad=data.skip_bad, keep_empty=data.keep_empty or not train)
    if data.class_names is not None and list(data.class_names) != dataset.class_names:
        raise ConfigError(f"data.class_names does not match the categories of "
                          f"{dataset.annotation_file}: {dataset.class_names}; set it to null to "
                          "use the file's categories")
    return dataset


def _yolo(cfg, train: bool) -> YOLODataset:
    data = cfg.data
    split = data.yolo.train_split if train else data.yolo.test_split
    if not (Path(data.root) / "images" / split).is_dir():  # the split data.yaml names, if any
        key = TRAIN_SPLIT_KEY if train else TEST_SPLIT_KEY
        named = data_yaml_split(Path(data.root) / data.yolo.names_file, key)
        if named is not None:
            logger.info("YOLO: no images/%s/; using images/%s/, the '%s' split of %s",
                        split, named, key, data.yolo.names_file)
            split = named
    return YOLODataset(data.root, split, class_names=data.class_names,
                       names_file=data.yolo.names_file, keep_empty=data.keep_empty or not train,
                       skip_bad=data.skip_bad)


DATASET_BUILDERS: dict[str, Callable[..., DetectionDataset]] = {
    "voc": _voc,
    "coco": _coco,
    "yolo": _yolo,
    "shapes": _shapes,
}


def build_dataset(cfg, train: bool) -> DetectionDataset:
    """The training (train=True) or test data set of `cfg.data`, without a transform.

    Training sets leave out images without objects unless data.keep_empty; test sets keep
    them. Raises ConfigError when model.num_classes does not equal the classes + background.
    """
    fmt = cfg.data.format
    if fmt not in DATASET_BUILDERS:
        raise ConfigError(f"No data format named '{fmt}' (data.format); known: "
                          f"{', '.join(sorted(DATASET_BUILDERS))}")
    dataset = DATASET_BUILDERS[fmt](cfg, train)
    if train and len(dataset) == 0:
        raise DataError(f"The training set is empty: {dataset.report.summary()}. Check "
                        f"data.root ({cfg.data.root}) and {_split_keys(cfg)}",
                        "empty data set", cfg.data.root)
    expected = len(dataset.class_names) + 1
    if cfg.model.num_classes != expected:
        raise ConfigError(
            f"Config key 'model.num_classes' is {cfg.model.num_classes} but the {fmt} data set "
            f"has {len(dataset.class_names)} classes; expected {expected} (classes + background)"
        )
    return dataset


def _split_keys(cfg) -> str:
    """Which config keys name the training images of `cfg.data.format`."""
    data = cfg.data
    if data.format == "coco":
        return (f"data.coco.train_annotations ({data.coco.train_annotations}) / train_images "
                f"({data.coco.train_images})")
    if data.format == "shapes":
        return f"data.shapes.num_train ({data.shapes.num_train})"
    return (f"data.train_sets ({data.train_sets}: ImageSets/Main/<split>.txt of each VOC<year>); "
            "images without objects are left out unless data.keep_empty=true")


def build_transform(cfg, train: bool) -> Callable:
    """SSDAugmentation with the stages of data.augmentation for training (when data.augment),
    else BaseTransform; at model.image_size with data.mean."""
    size, mean = cfg.model.image_size, cfg.data.mean
    if train and cfg.data.augment:
        stages = cfg.data.augmentation
        try:
            return SSDAugmentation(size, mean, max_expand=stages.max_expand,
                                   photometric=stages.photometric, crop=stages.crop, mirror=stages.mirror)
        except ValueError as error:  # SSDAugmentation checks its arguments; name the config key
            raise ConfigError(f"Config key 'data.augmentation.max_expand' is {stages.max_expand}; "
                              f"{error}") from error
    return BaseTransform(size, mean)
