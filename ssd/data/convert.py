"""Convert detection data sets between the VOC, COCO and YOLO layouts, every split at once.

    convert_dataset("data/VOCdevkit/VOC2007", "data/voc07_yolo", source="voc", target="yolo")

The project's own readers (VOCDataset, COCODataset, YOLODataset) read the source, so each
format's coordinate convention stays in one place: a record's box becomes
``(value - dataset.coordinate_origin) / image size`` (VOC's XML is 1-based, COCO's JSON 0-based,
YOLO normalised). In between, a data set is a `Collection`: per split, one `Item` per image with
normalised xyxy boxes, a class name and a difficult flag per object. Writers turn it back into
files: VOC XML with integer 1-based pixels, COCO JSON with 0-based pixel boxes (difficult ->
iscrowd), YOLO label lines with 6 decimals (YOLO has no difficult flag: those objects are left
out and counted). Images are copied; the output is written to a temporary folder next to it and
renamed into place at the end, together with a README.txt holding the config to read it.

Names from the data never steer where a file goes: the readers refuse an image path that leads
out of its image folder (a COCO file_name, a VOC image id), and output files and split folders
are named through `safe_file_name` (ordinary names unchanged).

Source layouts (what the project's configs read):
    voc   root/ImageSets/Main/{split}.txt (root named VOC*) or root/VOC*/ImageSets/Main/{split}.txt;
          split files with an underscore (per-class lists) are not splits
    coco  root/annotations/instances_{split}.json (else every annotations/*.json, split = stem)
          with images in root/{split}/ or root/images/{split}/
    yolo  root/images/{split}/, root/labels/{split}/, root/data.yaml
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from xml.sax.saxutils import escape

import numpy as np
import yaml

from ssd.commands import command
from ssd.data.coco import COCODataset
from ssd.data.common import DetectionDataset
from ssd.data.voc import VOCDataset, read_split, voc_annotation_file
from ssd.data.yolo import TEST_SPLIT_KEY, TRAIN_SPLIT_KEY, YOLODataset
from ssd.fileio import CANNOT_WRITE, note_failed_action, replace_directory, safe_file_name, safe_file_names
from ssd.progress import progress_bar

logger = logging.getLogger(__name__)

FORMATS = ("voc", "coco", "yolo")
YOLO_DECIMALS = 6  # normalised values: 0.5e-6 x image side, far below a pixel
COCO_DECIMALS = 3  # pixels
VOC_OUTPUT_NAME = "converted"  # VOC output goes to OUT/VOCconverted/ (config year "converted")


@dataclass
class Item:
    """One image of a split, in the neutral form every reader produces and every writer takes."""

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # [n, 4] float64 (xmin, ymin, xmax, ymax) normalised to [0, 1]
    names: list[str]  # [n] class name per object
    difficult: np.ndarray  # [n] bool (VOC difficult, COCO iscrowd)


@dataclass
class Collection:
    """A whole data set: class names in label order and the images of each split."""

    class_names: list[str]
    splits: dict[str, list[Item]]

    def num_images(self) -> int:
        return sum(len(items) for items in self.splits.values())


def items_of(dataset: DetectionDataset) -> list[Item]:
    """The records of a project data set as Items: boxes [n, 4] become
    ``(value - coordinate_origin) / (width, height, width, height)``."""
    items = []
    for record in dataset.records:
        scale = np.array([record.width, record.height] * 2, dtype=np.float64)
        boxes = (record.boxes.astype(np.float64) - dataset.coordinate_origin) / scale  # [n, 4]
        items.append(Item(record.image_path, record.width, record.height, boxes,
                          [dataset.class_names[label] for label in record.labels],
                          record.difficult.copy()))
    return items


def _merge_names(known: list[str], more: Sequence[str]) -> list[str]:
    return known + [name for name in more if name not in known]


# ----------------------------------------------------------------------------------- readers
def _voc_folders(root: Path) -> list[Path]:
    if (root / "ImageSets" / "Main").is_dir():
        if not root.name.startswith("VOC"):
            raise ValueError(f"{root} holds ImageSets/Main but VOC readers expect a folder named "
                             f"VOC<name>; rename it (e.g. VOC{root.name}) or pass its parent")
        return [root]
    return sorted(p for p in root.glob("VOC*") if (p / "ImageSets" / "Main").is_dir())


def _voc_splits(folder: Path) -> list[str]:
    """Split files of ImageSets/Main; names with an underscore are per-class lists."""
    return sorted(p.stem for p in (folder / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)


def _voc_object_names(folder: Path, splits: Sequence[str]) -> set[str]:
    """Class names used by the XML files of `splits` (unreadable files: VOCDataset reports them)."""
    split_files = [folder / "ImageSets" / "Main" / f"{split}.txt" for split in splits]
    xml_files = {voc_annotation_file(folder / "Annotations", image_id, split_file)
                 for split_file in split_files for image_id in read_split(split_file)}
    names = set()
    for xml_file in xml_files:
        try:
            root = ET.parse(xml_file).getroot()
        except (OSError, ET.ParseError):
            continue
        names.update(node.text.strip() for node in root.iterfind("object/name") if node.text)
    return names


def read_voc(root: Path, class_names: Sequence[str] | None = None) -> Collection:
    """Every split of a VOC folder (or of each VOC* folder of a VOCdevkit; then the splits are
    named {split}{year}, e.g. trainval2007). Class names: `class_names`, else the sorted names
    found in the XML files (for PASCAL VOC that is its usual order)."""
    folders = _voc_folders(root)
    if not folders:
        raise FileNotFoundError(f"No VOC data under {root}: expected {root}/ImageSets/Main/<split>.txt "
                                f"(in a folder named VOC*) or {root}/VOC*/ImageSets/Main/<split>.txt")
    found = {folder: _voc_splits(folder) for folder in folders}
    names = list(class_names) if class_names else sorted(
        set().union(*(_voc_object_names(folder, splits) for folder, splits in found.items())))
    splits = {}
    for folder, folder_splits in found.items():
        year = folder.name[len("VOC"):]
        for split in folder_splits:
            dataset = VOCDataset(folder.parent, [(year, split)], class_names=names,
                                 keep_difficult=True, keep_empty=True, verbose=False)
            splits[split if len(folders) == 1 else f"{split}{year}"] = items_of(dataset)
    return Collection(names, splits)


def _coco_image_dir(root: Path, split: str) -> Path:
    candidates = [root / split, root / "images" / split]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"No image folder for COCO split '{split}': expected "
                            f"{candidates[0]} or {candidates[1]}")


def read_coco(root: Path, class_names: Sequence[str] | None = None) -> Collection:
    """Every annotations/instances_{split}.json (else every annotations/*.json) of `root`.
    Class names are the files' categories (sorted by id); `class_names`, if given, must agree."""
    annotations = root / "annotations"
    files = sorted(annotations.glob("instances_*.json")) or sorted(annotations.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"No COCO annotation files: expected {annotations}/instances_<split>.json")
    names: list[str] = []
    splits = {}
    for path in files:
        split = path.stem.removeprefix("instances_")
        dataset = COCODataset(path, _coco_image_dir(root, split), keep_empty=True, verbose=False)
        if class_names and list(class_names) != dataset.class_names:
            raise ValueError(f"--class-names {list(class_names)} do not agree with the categories of "
                             f"{path}: {dataset.class_names}")
        names = _merge_names(names, dataset.class_names)
        splits[split] = items_of(dataset)
    return Collection(names, splits)


def read_yolo(root: Path, class_names: Sequence[str] | None = None) -> Collection:
    """Every split (sub-folder) of root/images. Class names from root/data.yaml, or
    `class_names` when there is none (both: they must agree)."""
    split_dirs = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) \
        if (root / "images").is_dir() else []
    if not split_dirs:
        raise FileNotFoundError(f"No YOLO data under {root}: expected {root}/images/<split>/")
    names: list[str] = []
    splits = {}
    for split in split_dirs:
        dataset = YOLODataset(root, split, class_names=class_names or None, keep_empty=True,
                              verbose=False)
        names = _merge_names(names, dataset.class_names)
        splits[split] = items_of(dataset)
    return Collection(names, splits)


READERS: dict[str, Callable[[Path, Sequence[str] | None], Collection]] = {
    "voc": read_voc, "coco": read_coco, "yolo": read_yolo}


# ----------------------------------------------------------------------------------- writers
def output_stems(collection: Collection) -> dict[Path, str]:
    """One output file stem per source image, unique over all splits (VOC keeps every split's
    images in one folder) and regardless of case: the source stem through `safe_file_name`
    (unchanged when ordinary), or that stem-2, stem-3, ... when another image has it."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()  # case-folded: "A.jpg" and "a.jpg" are one file on some systems
    for items in collection.splits.values():
        for item in items:
            if item.image_path in stems:  # the same image in two splits (VOC train + trainval)
                continue
            first = safe_file_name(item.image_path.stem, f"file name of image {item.image_path}")
            stem, count = first, 1
            while stem.casefold() in taken:
                count += 1
                stem = f"{first}-{count}"
            stems[item.image_path] = stem
            taken.add(stem.casefold())
    return stems


def _copy_image(item: Item, folder: Path, stem: str) -> str:
    """Copy the image into `folder` as stem + its extension; returns the new file name."""
    name = stem + item.image_path.suffix
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(item.image_path, folder / name)
    return name


def _pixels(item: Item) -> np.ndarray:
    """Normalised boxes [n, 4] -> 0-based pixels [n, 4]."""
    return item.boxes * np.array([item.width, item.height] * 2, dtype=np.float64)


def voc_xml(file_name: str, item: Item) -> str:
    """VOC XML of one image: integer 1-based pixels ``round(normalised * size) + 1`` clipped
    to [1, size], so that VOCDataset's ``(xml - 1) / size`` gives the box back."""
    upper = np.array([item.width, item.height] * 2)
    corners = np.clip(np.rint(_pixels(item)).astype(np.int64) + 1, 1, upper)  # [n, 4]
    objects = "".join(
        f"  <object>\n    <name>{escape(name)}</name>\n    <difficult>{int(difficult)}</difficult>\n"
        f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n"
        "  </object>\n"
        for name, difficult, (x0, y0, x1, y1) in zip(item.names, item.difficult, corners.tolist()))
    return (f"<annotation>\n  <filename>{escape(file_name)}</filename>\n  <size><width>{item.width}"
            f"</width><height>{item.height}</height><depth>3</depth></size>\n{objects}</annotation>\n")


def write_voc(collection: Collection, out: Path, advance: Callable[[], None]) -> None:
    """OUT/VOCconverted/{JPEGImages, Annotations, ImageSets/Main/{split}.txt}."""
    folder = out / f"VOC{VOC_OUTPUT_NAME}"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    stems, written = output_stems(collection), set()
    for split, items in collection.splits.items():
        for item in items:
            stem = stems[item.image_path]
            if stem not in written:
                name = _copy_image(item, folder / "JPEGImages", stem)
                (folder / "Annotations" / f"{stem}.xml").write_text(voc_xml(name, item))
                written.add(stem)
            advance()
        ids = "".join(f"{stems[item.image_path]}\n" for item in items)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)


def write_coco(collection: Collection, out: Path, advance: Callable[[], None]) -> None:
    """OUT/annotations/instances_{split}.json and OUT/{split}/ images; category ids 1..N in
    class order, bbox [x, y, w, h] 0-based pixels, iscrowd = difficult."""
    category = {name: index + 1 for index, name in enumerate(collection.class_names)}
    categories = [{"id": cid, "name": name, "supercategory": "none"} for name, cid in category.items()]
    stems = output_stems(collection)
    (out / "annotations").mkdir(parents=True)
    for split, items in collection.splits.items():
        images, annotations = [], []
        for image_id, item in enumerate(items, start=1):
            name = _copy_image(item, out / split, stems[item.image_path])
            images.append({"id": image_id, "file_name": name, "width": item.width,
                           "height": item.height})
            for (x0, y0, x1, y1), label, crowd in zip(_pixels(item).tolist(), item.names,
                                                      item.difficult):
                xywh = [round(value, COCO_DECIMALS) for value in (x0, y0, x1 - x0, y1 - y0)]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": category[label], "bbox": xywh,
                                    "area": round(xywh[2] * xywh[3], COCO_DECIMALS),
                                    "iscrowd": int(crowd)})
            advance()
        data = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def yolo_lines(item: Item, label: dict[str, int]) -> str:
    """Label file text of the image's non-difficult objects: ``class cx cy w h`` (normalised);
    `label` maps class name -> class number."""
    keep = ~item.difficult
    boxes = item.boxes[keep]
    centre_size = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]],
                                 axis=1)  # [n, (cx, cy, w, h)]
    names = [name for name, kept in zip(item.names, keep) if kept]
    return "".join(f"{label[name]} " + " ".join(f"{v:.{YOLO_DECIMALS}f}" for v in row) + "\n"
                   for name, row in zip(names, centre_size.tolist()))


def write_yolo(collection: Collection, out: Path, advance: Callable[[], None]) -> None:
    """OUT/images/{split}/, OUT/labels/{split}/{stem}.txt and OUT/data.yaml (names, nc, one
    'split: images/split' entry per split, and 'train:' / 'val:' naming the training and test
    splits as Ultralytics does, so the converted set reads with the default data.yolo keys)."""
    stems, dropped = output_stems(collection), 0
    label = {name: index for index, name in enumerate(collection.class_names)}
    for split, items in collection.splits.items():
        labels = out / "labels" / split
        labels.mkdir(parents=True)
        for item in items:
            stem = stems[item.image_path]
            _copy_image(item, out / "images" / split, stem)
            (labels / f"{stem}.txt").write_text(yolo_lines(item, label))
            dropped += int(item.difficult.sum())
            advance()
    entries = {split: f"images/{split}" for split in collection.splits}
    splits = list(collection.splits)  # + the Ultralytics keys, which the reader follows too
    entries.setdefault(TRAIN_SPLIT_KEY, f"images/{_pick_split(splits, ['train'], splits[0])}")
    entries.setdefault(TEST_SPLIT_KEY, f"images/{_pick_split(splits, ['test', 'val'], splits[-1])}")
    entries.update(nc=len(collection.class_names), names=list(collection.class_names))
    (out / "data.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    if dropped:
        logger.info("YOLO has no difficult flag: %d difficult (or crowd) objects were left out",
                    dropped)


WRITERS: dict[str, Callable[[Collection, Path, Callable[[], None]], None]] = {
    "voc": write_voc, "coco": write_coco, "yolo": write_yolo}


# ------------------------------------------------------------------------------------ driver
def _pick_split(splits: Sequence[str], words: Sequence[str], fallback: str) -> str:
    return next((split for word in words for split in splits if word in split), fallback)


def config_snippet(target: str, out: Path, collection: Collection) -> str:
    """The config lines that read the converted set (train / test split guessed by name)."""
    splits = list(collection.splits)
    train = _pick_split(splits, ["train"], splits[0])
    test = _pick_split(splits, ["test", "val"], splits[-1])
    data: dict = {"format": target, "root": str(out), "class_names": list(collection.class_names)}
    if target == "voc":
        data.update(train_sets=[[VOC_OUTPUT_NAME, train]], test_sets=[[VOC_OUTPUT_NAME, test]])
    elif target == "coco":
        data["coco"] = {"train_annotations": f"annotations/instances_{train}.json",
                        "train_images": train, "test_annotations": f"annotations/instances_{test}.json",
                        "test_images": test}
    else:
        data["yolo"] = {"train_split": train, "test_split": test, "names_file": "data.yaml"}
    config = {"model": {"num_classes": len(collection.class_names) + 1}, "data": data}
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def _check_paths(root: Path, out: Path, overwrite: bool) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"Input folder not found: {root}")
    if out.resolve() == root.resolve() or out.resolve() in root.resolve().parents:
        raise ValueError(f"Output folder {out} holds the input {root}; choose another --out")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"Output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"Output folder {out} exists and is not empty; pass --overwrite to "
                         "replace it")


def _name_output_path(err: OSError, staging: Path, out: Path) -> None:
    """An OSError raised while writing into `staging` names the place in `out` it concerns
    (the temporary folder is gone by the time the error is read)."""
    for attribute in ("filename", "filename2"):  # filename2: the target of a copy
        name = getattr(err, attribute)
        if name is not None and Path(name).is_relative_to(staging):
            setattr(err, attribute, str(out / Path(name).relative_to(staging)))
    note_failed_action(err, CANNOT_WRITE, out)


def convert_dataset(root: str | Path, out: str | Path, source: str, target: str,
                    class_names: Sequence[str] | None = None, overwrite: bool = False,
                    progress: bool = True) -> Collection:
    """Write the data set at `root` (format `source`) as format `target` under `out`.

    Args:
        root, out: input and output folders; `out` must be empty or absent unless `overwrite`.
        source, target: "voc", "coco" or "yolo".
        class_names: class list for sources that do not carry one (VOC; YOLO without
            data.yaml); where the source has its own, it must agree.
        progress: a progress bar over the images written (`ssd.progress`).

    Returns the Collection that was written (class names, items per split).

    Raises:
        OSError: the output cannot be written (read-only folder, disk full, ...), naming the
            path below `out`; nothing is left behind and an existing `out` stays as it was.
    """
    for role, name in (("source", source), ("target", target)):
        if name not in FORMATS:
            raise ValueError(f"Unknown {role} format '{name}'; expected one of {', '.join(FORMATS)}")
    root, out = Path(root), Path(out)
    _check_paths(root, out, overwrite)
    collection = READERS[source](root, class_names)
    collection.splits = dict(zip(safe_file_names(list(collection.splits), "split name"),
                                 collection.splits.values()))
    if not collection.num_images():
        raise ValueError(f"No images found in the {source} data set at {root}")
    if not collection.class_names:
        raise ValueError(f"No objects (so no class names) in {root}; give the class names")
    staging = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        with progress_bar(total=collection.num_images(), desc=f"{source} -> {target}",
                          unit="image", enabled=progress) as bar:
            WRITERS[target](collection, staging, lambda: bar.update(1))
        snippet = config_snippet(target, out, collection)
        (staging / "README.txt").write_text(
            f"Converted from the {source} data set at {root} by {command('ssd-convert')}.\n"
            f"Splits: {', '.join(f'{s} ({len(i)} images)' for s, i in collection.splits.items())}.\n"
            f"Class names in label order: {', '.join(collection.class_names)}.\n"
            f"Config to read it (set the train / test splits you want):\n\n{snippet}")
        replace_directory(staging, out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            _name_output_path(err, staging, out)
        raise
    logger.info("Wrote %d images (%s) as %s to %s; config in %s", collection.num_images(),
                ", ".join(collection.splits), target, out, out / "README.txt")
    return collection
