"""The configs a training run derives from its data, validated again by ssd.config:

    cfg = record_split(cfg, output_dir)      # a VOC folder's train / test split, written down
    cfg = with_class_names(cfg, train_set)   # the class names the data set's files gave

They live apart from ssd.data.build because config validation reads the data set formats from
there (ssd.config_schema): the registry never imports ssd.config, so the package keeps no
import cycle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ssd.config import Config, load_config_from_dict, merge_overrides
from ssd.data.common import DetectionDataset
from ssd.data.voc_layout import (
    SPLIT_FOLDER_NAME,
    annotated_ids,
    find_voc_folder,
    has_split,
    split_ids,
    write_split,
)

logger = logging.getLogger(__name__)


def with_class_names(cfg: Config, dataset: DetectionDataset) -> Config:
    """`cfg` with data.class_names set to `dataset`'s class names (label order).

    Training calls this on its training set, so the config saved in every checkpoint names the
    classes whatever file named them (VOC list, COCO categories, YOLO data.yaml or
    classes.txt): prediction, evaluation, export and fine-tuning then see the real names, and
    the test set is built for the same list in the same order.
    """
    names = list(dataset.class_names)
    if cfg.data.class_names is not None and list(cfg.data.class_names) == names:
        return cfg
    config = cfg.to_dict()
    config["data"]["class_names"] = names
    return load_config_from_dict(config, source="the config with the training set's class names")


def record_split(cfg: Config, output_dir: str | Path, resume: bool = False) -> Config:
    """The config a training run into `output_dir` uses: for a VOC folder without split files
    and without data.split_dir, its train / test split is written to
    <output_dir>/split/{train,test}.txt (kept as it is when `resume` finds it there) and
    data.split_dir names that folder, so that the run's checkpoints, and evaluating them,
    use the same test images. Other configs are returned unchanged.
    """
    data = cfg.data
    if data.format != "voc" or data.split_dir is not None:
        return cfg
    folder = find_voc_folder(data.root)
    if folder is None or folder.has_split_files:
        return cfg
    split_dir = Path(output_dir).absolute() / SPLIT_FOLDER_NAME
    if not (resume and has_split(split_dir)):
        split = split_ids(annotated_ids(folder), data.val_fraction)
        write_split(split_dir, split)
        logger.info("%s has no ImageSets/Main split files: split its %d images into %d train and "
                    "%d test (data.val_fraction=%g), written to %s", folder.root,
                    sum(map(len, split.values())), len(split["train"]), len(split["test"]),
                    data.val_fraction, split_dir)
    return merge_overrides(cfg, [f"data.split_dir={json.dumps(str(split_dir))}"])
