"""Everything between files on disk and batches for the model.

    from ssd.data import build_dataset, build_transform, make_train_loader, make_test_loader
    ds = build_dataset(cfg, train=True)             # VOCDataset / COCODataset / YOLODataset
    loader = make_train_loader(ds, build_transform(cfg, train=True), batch_size=32, seed=0)
    images, targets, indices = next(iter(loader))   # [B,3,S,S], B x [n_i,5], [B]

Readers: `VOCDataset` (VOCdevkit layout: PASCAL VOC, custom sets, the synthetic shapes),
`COCODataset` (pycocotools). Synthetic data: `make_shapes`. Transforms: `SSDAugmentation`,
`BaseTransform` (outputs are mean-subtracted RGB). Loaders: `detection_collate`,
`InfiniteSampler`, `make_train_loader`, `make_test_loader`.
`YOLODataset` reads the YOLO layout (images/<split>/, labels/<split>/, data.yaml).
"""

from ssd.data.build import (
    DATASET_BUILDERS,
    build_dataset,
    build_transform,
    class_names_for,
    configured_class_names,
    ensure_shapes,
    known_class_names,
)
from ssd.data.coco import COCODataset
from ssd.data.common import DataError, DetectionDataset, LoadReport, read_image
from ssd.data.loader import (
    DetectionLoader,
    InfiniteSampler,
    LoadFailure,
    TransformedDataset,
    detection_collate,
    make_test_loader,
    make_train_loader,
)
from ssd.data.run_config import record_split, with_class_names
from ssd.data.shapes import SHAPES_CLASSES, make_shapes
from ssd.data.transforms import AugmentParams, BaseTransform, SSDAugmentation
from ssd.data.voc import VOC_CLASSES, VOCDataset, parse_voc_xml
from ssd.data.yolo import YOLODataset

__all__ = [
    "AugmentParams",
    "BaseTransform",
    "COCODataset",
    "DATASET_BUILDERS",
    "DataError",
    "DetectionDataset",
    "DetectionLoader",
    "InfiniteSampler",
    "LoadFailure",
    "LoadReport",
    "SHAPES_CLASSES",
    "SSDAugmentation",
    "TransformedDataset",
    "VOC_CLASSES",
    "VOCDataset",
    "YOLODataset",
    "build_dataset",
    "build_transform",
    "class_names_for",
    "configured_class_names",
    "detection_collate",
    "ensure_shapes",
    "known_class_names",
    "make_shapes",
    "make_test_loader",
    "make_train_loader",
    "parse_voc_xml",
    "read_image",
    "with_class_names",
    "record_split",
]
