"""Every config key, declared once: default, type, nullability, allowed values, whether it is a
path, and what it means. ssd.config derives its defaults and checks from KEYS, and the README's
configuration table is generated from it (`python -m ssd.config_schema`).

The keys that pick a registry entry (backbones, losses, optimizers, LR schedules, metrics, data
set formats) take their choices from the module that implements the registry, imported only
when a config is validated: those modules never import the config, so there is no cycle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ssd import defaults

# Bump when a key is renamed or removed, and add the step to ssd.config's migrations.
CONFIG_VERSION = 3


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; None is unbounded, `*_open` excludes the end point."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """e.g. '>= 1', '> 0', 'in (0, 1]'."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
IOU = Range(0, 1, low_open=True)


@dataclass(frozen=True)
class NumberList:
    """A list of numbers: element type, allowed range, and its length (None: any)."""

    kind: type
    allowed: Range | None = None
    length: int | None = None


@dataclass(frozen=True)
class ResourceLimit:
    """The most a resource key may ask for: `maximum` `resource`s, and why (given the value)."""

    maximum: int
    resource: str
    reason: Callable[[int], str]


# The keys that size a resource have an upper bound, so that a mistyped value stops with a
# message instead of exhausting the machine (forking until the OOM killer steps in, allocating
# a probe image of 100 GiB) before any other check could speak.
MAX_LOADER_PROCESSES = 64
# Memory grows with the square of the image size S: one float32 image is 3 S^2 values, and the
# first VGG16 stage keeps 64 channels at full resolution, 64 S^2 float32 values (256 S^2 bytes)
# per image and activation: 1 GiB at 2048 px, 2.3 TiB at 100000 px. SSD is published at 300
# and 512 px; 2048 leaves room for larger inputs while one image's activations still fit a GPU.
MAX_IMAGE_SIZE = 2048
FIRST_STAGE_CHANNELS = 64
MAX_EXPAND_AREA = 16  # the default zoom-out (data.augmentation.max_expand 4) squared
FLOAT32_BYTES = 4
# The images of one batch are decoded, augmented and held at once: 4096 images of 300 px are
# 4.1 GiB of float32 input, before the network's activations (tens of times more). The batch
# is global: under torchrun each process holds its share.
MAX_BATCH_IMAGES = 4096
MAX_GENERATED_IMAGES = 1_000_000  # the shapes data set: one JPEG file and one list entry each
DEFAULT_IMAGE_SIZE = 300  # model.image_size of SSD300


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


def _activation_memory(size: int) -> str:
    first_stage = FIRST_STAGE_CHANNELS * size * size * FLOAT32_BYTES
    return (f"memory grows with the square of the size: the first VGG16 stage alone holds "
            f"{FIRST_STAGE_CHANNELS} x {size} x {size} float32 values per image, {_gib(first_stage)}")


def _generated_image_memory(size: int) -> str:
    augmented = 3 * size * size * FLOAT32_BYTES
    return (f"memory grows with the square of the size: each image is augmented as 3 x {size} x "
            f"{size} float32 values, {_gib(augmented)}, up to {_gib(augmented * MAX_EXPAND_AREA)} "
            "once zoomed out")


def _batch_memory(batch: int) -> str:
    pixels = batch * 3 * DEFAULT_IMAGE_SIZE * DEFAULT_IMAGE_SIZE * FLOAT32_BYTES
    return (f"the images of a batch are held at once: {batch} images of the default "
            f"{DEFAULT_IMAGE_SIZE} px are {_gib(pixels)} of float32 input before the network's "
            "activations")


_LOADER_LIMIT = ResourceLimit(MAX_LOADER_PROCESSES, "loader processes",
                              lambda _: "each holds a copy of the data set and a queue of prepared batches")
_GENERATED_LIMIT = ResourceLimit(
    MAX_GENERATED_IMAGES, "generated images",
    lambda _: "each is written to disk as a JPEG file when the data set is first used")


# The registries, imported when a config is validated (they import torch or data libraries).
def _backbones() -> Iterable[str]:
    from ssd.modeling.registry import BACKBONES

    return BACKBONES


def _losses() -> Iterable[str]:
    from ssd.loss import LOSSES

    return LOSSES


def _loc_losses() -> Iterable[str]:
    from ssd.loss import LOC_LOSSES

    return LOC_LOSSES


def _optimizers() -> Iterable[str]:
    from ssd.engine.solver import OPTIMIZERS

    return OPTIMIZERS


def _schedules() -> Iterable[str]:
    from ssd.engine.solver import SCHEDULES

    return SCHEDULES


def _metrics() -> Iterable[str]:
    from ssd.evaluation.dataset_eval import METRICS

    return METRICS


def _dataset_formats() -> Iterable[str]:
    from ssd.data.build import DATASET_BUILDERS

    return DATASET_BUILDERS


def _preempt_signals() -> Iterable[str]:
    from ssd.engine.preemption import PREEMPT_SIGNALS

    return PREEMPT_SIGNALS


def _batch_dtypes() -> Iterable[str]:
    from ssd.precision import BATCH_DTYPES

    return BATCH_DTYPES


@dataclass(frozen=True)
class Key:
    """One config key (dotted name) and everything known about it.

    `kind` is the type of a set value (default: the type of `default`; needed when the default
    is null). `nullable` keys also take null; `keywords` are strings taken besides `kind`
    (resolved when used). `choices` lists the allowed values, or is a function returning the
    names of the registry that implements them. `allowed` is the range of a number, `items`
    the form of a list of numbers, `limit` the most a resource key may ask for. `path` keys hold
    files or folders (relative values are resolved when loaded) unless the value is one of
    `path_keywords`. `image_sets` keys hold [year, split] pairs. `doc` is one line for the
    README's table.
    """

    name: str
    default: Any
    kind: type | None = None
    doc: str = ""
    nullable: bool = False
    keywords: tuple[str, ...] = ()
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    allowed: Range | None = None
    items: NumberList | None = None
    limit: ResourceLimit | None = None
    path: bool = False
    path_keywords: tuple[str, ...] = ()
    image_sets: bool = False

    @property
    def value_type(self) -> type:
        """The type a set value must have (int is accepted for float)."""
        return self.kind if self.kind is not None else type(self.default)

    @property
    def takes_null(self) -> bool:
        return self.nullable or self.default is None

    def allowed_choices(self) -> tuple[str, ...] | None:
        """The allowed values of a choice key (its registry's names), else None."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


KEYS: tuple[Key, ...] = (
    Key("version", CONFIG_VERSION, doc="config schema version; configs stored in checkpoints are "
        "migrated from theirs (leave it out of your files)"),
    # model
    Key("model.backbone", "vgg16", choices=_backbones,
        doc="`vgg16` (SSD300/SSD512), `ssd7` (small, batch norm, trains from scratch), "
            "`mobilenet_v3_large`, `resnet50`; any name registered in `ssd.modeling.BACKBONES`"),
    Key("model.num_classes", 21, allowed=Range(2), doc="foreground classes + 1 background"),
    Key("model.image_size", DEFAULT_IMAGE_SIZE, allowed=AT_LEAST_ONE,
        limit=ResourceLimit(MAX_IMAGE_SIZE, "px", _activation_memory),
        doc="network input side (vgg16: 300 or 512)"),
    Key("model.pretrained", None, str, path=True, path_keywords=("torchvision",),
        doc="backbone weights: vgg16: a reduced-fc VGG16 file (`weights/vgg16_reducedfc.pth`); "
            "mobilenet_v3_large / resnet50: a torchvision ImageNet state_dict file or "
            "`torchvision` (torch hub folder); null: from scratch"),
    Key("model.batch_norm", True, doc="batch norm in ssd7"),
    Key("model.channels", None, list, items=NumberList(int, AT_LEAST_ONE),
        doc="ssd7 block widths, 7 numbers (null: 32-48-64-64-48-48-32)"),
    Key("model.class_map", None, dict,
        doc="fine-tuning: `{new class: source class}` for renamed classes (others match by "
            "name); see `ssd.transfer`"),
    Key("model.freeze", [], doc="module-name prefixes whose parameters are not trained (e.g. "
        "`[vgg]`, `[base, extras]`); their BatchNorm keeps its statistics"),
    Key("model.priors.feature_maps", None, list, items=NumberList(int, AT_LEAST_ONE),
        doc="side of each prediction feature map. Each `model.priors` list left null is derived "
            "from the backbone at `model.image_size` (see \"Derived priors\"; vgg16 at 300 px: "
            "[38, 19, 10, 5, 3, 1], SSD300's priors); `model.priors: null` derives them all"),
    Key("model.priors.steps", None, list, items=NumberList(float, POSITIVE),
        doc="input pixels per feature-map cell, per map (null: derived; SSD300: "
            "[8, 16, 32, 64, 100, 300])"),
    Key("model.priors.min_sizes", None, list, items=NumberList(float, POSITIVE),
        doc="side of the smallest square prior, per map, in pixels (null: derived; SSD300: "
            "[30, 60, 111, 162, 213, 264])"),
    Key("model.priors.max_sizes", None, list, items=NumberList(float, POSITIVE),
        doc="sqrt(min_size x max_size) is the side of the second square prior, per map (null: "
            "derived; SSD300: [60, 111, 162, 213, 264, 315])"),
    Key("model.priors.aspect_ratios", None, list,
        doc="extra aspect ratios per map (each r adds r and 1/r); boxes per cell = "
            "2 + 2·len(aspect_ratios) (null: derived; SSD300: [[2], [2, 3], [2, 3], [2, 3], "
            "[2], [2]])"),
    Key("model.priors.clip", True, doc="clip prior boxes to the image"),
    Key("model.variances", list(defaults.VARIANCES), items=NumberList(float, POSITIVE, 2),
        doc="box coding variances (centre, size)"),
    # data
    Key("data.format", "voc", choices=_dataset_formats,
        doc="`voc`, `coco`, `yolo` or `shapes` (VOC layout, generated when training first uses "
            "it; evaluation never generates it)"),
    Key("data.root", "data/VOCdevkit", path=True, doc="data set root (see data/README.md)"),
    Key("data.train_sets", [["2007", "trainval"], ["2012", "trainval"]], image_sets=True,
        doc="training [year, split] pairs (VOC07+12 trainval)"),
    Key("data.test_sets", [["2007", "test"]], image_sets=True,
        doc="test [year, split] pairs (VOC07 test)"),
    Key("data.class_names", None, list,
        doc="class list of a custom data set (null: a VOCdevkit's 20 VOC classes; a VOC folder "
            "of one's own: the sorted names its XML files use; shapes: its 6; COCO / YOLO: from "
            "their files); each name once. Training stores the list it used here, so "
            "checkpoints name their classes"),
    Key("data.keep_difficult", False, doc="train on objects marked difficult"),
    Key("data.keep_empty", False, doc="keep training images without objects"),
    Key("data.skip_bad", False, doc="skip unreadable images / annotations instead of stopping"),
    Key("data.val_fraction", 0.1, allowed=Range(0, 1, low_open=True, high_open=True),
        doc="VOC folder without `ImageSets/Main` (Annotations/ + JPEGImages/, annotations/ + "
            "images/, or images beside their XML; see `ssd.data.voc_layout`): share of its images "
            "held out as the test set (a fixed shuffle, the same on every machine)"),
    Key("data.split_dir", None, str, path=True,
        doc="folder of that split's `train.txt` / `test.txt` (null: split by `val_fraction`); "
            "training writes `<output>/split/` and sets this key in its checkpoints, so "
            "`ssd-eval --weights <run>/model_*.pth` tests the same images"),
    Key("data.coco.train_annotations", "annotations/instances_train2017.json",
        doc="COCO training annotation JSON, relative to `data.root`"),
    Key("data.coco.train_images", "train2017", doc="COCO training image folder, relative to "
        "`data.root`"),
    Key("data.coco.test_annotations", "annotations/instances_val2017.json",
        doc="COCO test annotation JSON, relative to `data.root`"),
    Key("data.coco.test_images", "val2017", doc="COCO test image folder, relative to `data.root`"),
    Key("data.yolo.train_split", "train", doc="YOLO training split: `images/<split>/` and "
        "`labels/<split>/` under `data.root`; when that folder does not exist, the split "
        "data.yaml names as `train: images/<split>`"),
    Key("data.yolo.test_split", "val", doc="YOLO test split (likewise data.yaml's `val:`)"),
    Key("data.yolo.names_file", "data.yaml",
        doc="YOLO class names file, relative to `data.root` (`data.yaml`, or a `classes.txt` / "
            "`.names` file of one name a line)"),
    Key("data.shapes.num_train", 2000, allowed=NON_NEGATIVE, limit=_GENERATED_LIMIT,
        doc="training images of the generated shapes data set (the demo uses 5000)"),
    Key("data.shapes.num_test", 300, allowed=NON_NEGATIVE, limit=_GENERATED_LIMIT,
        doc="test images of the generated shapes data set"),
    Key("data.shapes.image_size", 300, allowed=Range(32),
        limit=ResourceLimit(MAX_IMAGE_SIZE, "px", _generated_image_memory),
        doc="side of the generated shapes images"),
    Key("data.shapes.seed", 0, doc="seed of the generated shapes data set"),
    Key("data.mean", [104, 117, 123], items=NumberList(float, None, 3),
        doc="BGR mean subtracted from images"),
    Key("data.augment", True, doc="SSD training augmentation on/off; its stages below"),
    Key("data.augmentation.photometric", True,
        doc="photometric distortion: brightness, contrast, saturation, hue, channel swap"),
    Key("data.augmentation.max_expand", 4.0, doc="zoom-out up to this ratio (1: off)"),
    Key("data.augmentation.crop", True, doc="min-IoU random crop"),
    Key("data.augmentation.mirror", True, doc="horizontal mirror"),
    Key("data.num_workers", "auto", int, nullable=True, keywords=("auto",), allowed=NON_NEGATIVE,
        limit=_LOADER_LIMIT,
        doc="loader processes; `auto` or null: min(8, cores per training process - 1), 0 with "
            "one core (see \"Training throughput\")"),
    Key("data.pin_memory", True, doc="page-locked batches on CUDA (asynchronous copies to the GPU)"),
    Key("data.cache_images", False,
        doc="decode every training image once, before training, and keep it in memory (width x "
            "height x 3 bytes each: VOC07+12 about 9 GiB; when the augmentation only resizes and "
            "mirrors, as the demo's, resized to the input size: S x S x 3 bytes; refused when over "
            "half the available memory; each DDP process holds its own copy); the batches stay "
            "the same, bit for bit (see \"Training throughput\"). The demo config turns it on"),
    Key("data.batch_dtype", "auto", choices=_batch_dtypes,
        doc="dtype of the training batches' images between the loader and the device: `auto` is "
            "float16 when the step runs float16 autocast (CUDA with `train.amp`), whose first "
            "convolution rounds the images to float16 anyway (the same outputs bit for bit for "
            "vgg16 and ssd7; resnet50 and mobilenet_v3_large scale their input first, so theirs "
            "moves by at most one float16 rounding), for half the bytes to send, pin and copy; "
            "else float32. `float32` / `float16` force one"),
    # loss
    Key("loss.name", "multibox", choices=_losses,
        doc="`multibox` (hard negative mining) or `focal`; any name registered in "
            "`ssd.loss.LOSSES`"),
    Key("loss.iou_threshold", defaults.MATCH_IOU_THRESHOLD, allowed=IOU,
        doc="IoU for a positive prior"),
    Key("loss.neg_pos_ratio", defaults.NEG_POS_RATIO, allowed=NON_NEGATIVE,
        doc="hard negatives per positive (a fractional ratio keeps ceil(ratio x positives))"),
    Key("loss.loc_loss", "smooth_l1", choices=_loc_losses, doc="`smooth_l1` or `l1`"),
    Key("loss.loc_weight", 1.0, allowed=NON_NEGATIVE, doc="weight of the localisation term"),
    Key("loss.alpha", 0.25, allowed=FRACTION, doc="focal loss: weight of the positive class"),
    Key("loss.gamma", 2.0, allowed=NON_NEGATIVE, doc="focal loss: focusing exponent"),
    # solver
    Key("solver.batch_size", 32, allowed=AT_LEAST_ONE,
        limit=ResourceLimit(MAX_BATCH_IMAGES, "images per global batch", _batch_memory),
        doc="global batch (split across processes under DDP)"),
    Key("solver.optimizer", "sgd", choices=_optimizers,
        doc="`sgd` (momentum, L2 decay) or `adamw` (beta1 = momentum, decoupled decay)"),
    Key("solver.lr", 1e-3, allowed=POSITIVE, doc="base learning rate"),
    Key("solver.momentum", 0.9, allowed=Range(0, 1, high_open=True), doc="momentum"),
    Key("solver.weight_decay", 5e-4, allowed=NON_NEGATIVE, doc="weight decay"),
    Key("solver.max_iter", 120000, allowed=AT_LEAST_ONE, doc="iterations"),
    Key("solver.schedule", "step", choices=_schedules,
        doc="`step` (LR x gamma at each of `lr_steps`) or `cosine` (to 0 at `max_iter`)"),
    Key("solver.lr_steps", [80000, 100000], items=NumberList(int, NON_NEGATIVE),
        doc="iterations where the step schedule multiplies the LR by `gamma`"),
    Key("solver.gamma", 0.1, allowed=POSITIVE, doc="LR factor at each of `lr_steps`"),
    Key("solver.warmup_iters", 500, allowed=NON_NEGATIVE, doc="iterations of linear warmup"),
    Key("solver.warmup_factor", 1.0 / 3, allowed=IOU, doc="LR factor at the start of the warmup"),
    Key("solver.clip_grad_norm", None, float, allowed=NON_NEGATIVE,
        doc="max global gradient norm (null or 0: no clipping)"),
    # train
    Key("train.seed", 0, doc="seed of weights init, sampling and augmentation"),
    Key("train.amp", False,
        doc="mixed precision: float16 + GradScaler on CUDA, bfloat16 on CPUs with bf16 in "
            "hardware (AVX-512 BF16 / AMX; other CPUs train in float32, where bf16 is emulated "
            "and slower)"),
    Key("train.channels_last", False, doc="channels_last memory format"),
    Key("train.compile", False,
        doc="`torch.compile` the model for training (see \"Training throughput\")"),
    Key("train.log_period", 20, allowed=AT_LEAST_ONE,
        doc="iterations between log lines (metrics.jsonl)"),
    Key("train.checkpoint_period", 5000, allowed=AT_LEAST_ONE,
        doc="iterations between periodic checkpoints"),
    Key("train.keep_checkpoints", 3, allowed=AT_LEAST_ONE, doc="periodic checkpoints kept"),
    Key("train.eval_period", 10000, allowed=NON_NEGATIVE,
        doc="iterations between evaluations (0: off); best.pth keeps the best mAP"),
    Key("train.output_dir", "runs/ssd", path=True,
        doc="checkpoints, metrics.jsonl, metrics.png"),
    Key("train.ema_decay", None, float, allowed=Range(0, 1, high_open=True),
        doc="exponential moving average of the weights (null or 0: off; e.g. 0.9998): "
            "evaluation during training, `best.pth` and everything that loads a checkpoint use "
            "the averaged weights; batch-norm statistics are copied, not averaged"),
    Key("train.ema_ramp", 2000, allowed=POSITIVE,
        doc="EMA warm-up in iterations: update t uses decay `ema_decay * (1 - exp(-t / ema_ramp))`"),
    Key("train.patience", None, int, allowed=AT_LEAST_ONE,
        doc="stop after this many evaluations in a row without a better mAP (null: off; needs "
            "`eval_period`)"),
    Key("train.max_time", None, float, allowed=POSITIVE,
        doc="stop after this many seconds of training (null: off), summed over resumed launches; "
            "e.g. 9000 for 2h30m"),
    Key("train.preempt_signal", "SIGUSR1", nullable=True, choices=_preempt_signals,
        doc="signal that makes training save a checkpoint at the next iteration and exit with "
            "status 75 (null: none; see \"Long runs and clusters\")"),
    Key("train.sync_bn", False,
        doc="batch norm synchronised across processes under torchrun (SyncBatchNorm; CUDA only)"),
    # test
    Key("test.score_threshold", defaults.SCORE_THRESHOLD, allowed=FRACTION,
        doc="minimum class score of a detection (scores must exceed it: 1 keeps none)"),
    Key("test.nms_threshold", defaults.NMS_THRESHOLD, allowed=IOU,
        doc="NMS suppresses boxes overlapping a better one by more than this IoU"),
    Key("test.top_k", defaults.TOP_K, allowed=AT_LEAST_ONE, doc="detections kept per image"),
    Key("test.candidates_per_class", defaults.CANDIDATES_PER_CLASS, allowed=AT_LEAST_ONE,
        doc="highest-scoring boxes per class that enter NMS"),
    Key("test.batch_size", 8, allowed=AT_LEAST_ONE,
        limit=ResourceLimit(MAX_BATCH_IMAGES, "images per batch", _batch_memory),
        doc="inference batch"),
    Key("test.metric", "voc07", choices=_metrics, doc="`voc07`, `voc10` or `coco`"),
)

def default_tree() -> dict[str, Any]:
    """The defaults of KEYS as a fresh nested dict ({"model": {"backbone": "vgg16", ...}})."""
    tree: dict[str, Any] = {}
    for key in KEYS:
        *parents, leaf = key.name.split(".")
        section = tree
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = copy.deepcopy(key.default)
    return tree


def _markdown_value(value: Any) -> str:
    """A default as YAML writes it: null, true, 0.001, `text`, [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, list):
        return "[" + ", ".join(_markdown_value(item).strip("`") for item in value) + "]"
    return str(value)


def markdown_table() -> str:
    """The README's configuration table: one row per key, its default and meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key.name}` | {_markdown_value(key.default)} | {key.doc} |" for key in KEYS]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
