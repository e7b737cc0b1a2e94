"""VOC XML data sets as annotation tools write them, besides the VOCdevkit layout.

    root/Annotations/<id>.xml + root/JPEGImages/<id>.jpg   (any folder name for root; any case,
                                                           and images/ for JPEGImages/)
    root/<id>.xml + root/<id>.jpg                          (one folder, images beside their XML)

An image is the file with its XML's stem. With root/ImageSets/Main/<split>.txt the splits named
by data.train_sets / test_sets are read from there; without split files the XML files are split
into train and test by `split_ids` (data.val_fraction), and training writes that split to
<output>/split/{train,test}.txt (`write_split`), which its checkpoints name as data.split_dir.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ssd.data.common import DataError
from ssd.data.voc import VOCSplit, read_split
from ssd.fileio import atomic_write

ANNOTATION_FOLDER_NAMES = ("annotations",)  # compared lower-case
IMAGE_FOLDER_NAMES = ("jpegimages", "images")  # compared lower-case, the first found is used
SPLIT_NAMES = ("train", "test")
SPLIT_FOLDER_NAME = "split"  # <output>/split/{train,test}.txt
# The permutation of the sorted ids that `split_ids` cuts: fixed, so a data set splits the same
# way on every machine and in every run.
SPLIT_RANDOM_STATE = 0


@dataclass(frozen=True)
class VOCFolder:
    """Where a folder outside the VOCdevkit layout keeps its XML files and images."""

    root: Path
    annotations: Path
    images: Path

    @property
    def split_files(self) -> Path:
        """root/ImageSets/Main, the folder of <split>.txt files (it may not exist)."""
        return self.root / "ImageSets" / "Main"

    @property
    def has_split_files(self) -> bool:
        return self.split_files.is_dir()


def _subfolder(folders: dict[str, Path], names: Sequence[str]) -> Path | None:
    return next((folders[name] for name in names if name in folders), None)


def find_voc_folder(root: str | Path) -> VOCFolder | None:
    """The layout of `root`: Annotations/ + JPEGImages/ (or images/, any case), or XML files
    directly in it; None for anything else (a VOCdevkit holding VOC<year>/ folders).

    Raises:
        DataError: root has an annotation folder but no image folder beside it.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    folders = {path.name.lower(): path for path in sorted(root.iterdir()) if path.is_dir()}
    annotations = _subfolder(folders, ANNOTATION_FOLDER_NAMES)
    images = _subfolder(folders, IMAGE_FOLDER_NAMES)
    if annotations is not None:
        if images is None:
            raise DataError(f"{root} has the annotation folder {annotations.name}/ but no image "
                            "folder beside it: expected JPEGImages/ or images/", "missing image",
                            root)
        return VOCFolder(root, annotations, images)
    if any(path.suffix == ".xml" for path in root.iterdir()):
        return VOCFolder(root, root, root)
    return None


def refuse_empty_folder(root: str | Path) -> None:
    """Raise DataError naming `root` when it is an empty folder, with the layouts it may have
    (a missing root or a VOCdevkit's missing split file is reported by the reader, which names
    the file and how to get PASCAL VOC)."""
    root = Path(root)
    if root.is_dir() and not any(root.iterdir()):
        raise DataError(f"No VOC data: data.root {root} is an empty folder; expected Annotations/ "
                        "+ JPEGImages/ (or annotations/ + images/), XML files beside their "
                        "images, or a VOCdevkit with VOC<year>/ folders", "missing data set", root)


def annotated_ids(folder: VOCFolder) -> list[str]:
    """Sorted stems of the folder's XML files.

    Raises:
        DataError: there is none (the message names the folder).
    """
    ids = sorted(path.stem for path in folder.annotations.iterdir() if path.suffix == ".xml")
    if not ids:
        raise DataError(f"No XML annotation files in {folder.annotations}", "missing annotation",
                        folder.annotations)
    return ids


def annotated_class_names(folder: VOCFolder) -> list[str]:
    """The sorted class names the folder's XML files use (``<object><name>``): the class list
    of a folder whose config leaves data.class_names null. An XML file that cannot be parsed
    is skipped here; reading the data set reports it.

    Raises:
        DataError: there is no XML file, or no file names an object.
    """
    names = set()
    for image_id in annotated_ids(folder):
        try:
            root = ET.parse(folder.annotations / f"{image_id}.xml").getroot()
        except ET.ParseError:
            continue
        names.update((obj.findtext("name") or "").strip() for obj in root.iter("object"))
    names.discard("")
    if not names:
        raise DataError(f"No object names in the XML files of {folder.annotations}; set "
                        "data.class_names", "missing annotation", folder.annotations)
    return sorted(names)


def split_ids(ids: Sequence[str], val_fraction: float) -> dict[str, list[str]]:
    """Split image ids into {"train": [...], "test": [...]} (each sorted), the same way every
    time: a fixed permutation (SPLIT_RANDOM_STATE) of the sorted ids, whose first
    round(len(ids) * val_fraction) ids (at least 1, at most all but one) are the test set.

    Raises:
        DataError: fewer than two ids.
    """
    ordered = sorted(ids)
    if len(ordered) < len(SPLIT_NAMES):
        raise DataError(f"Cannot split {len(ordered)} image(s) into train and test: at least "
                        f"{len(SPLIT_NAMES)} are needed", "empty data set")
    num_test = min(max(round(len(ordered) * val_fraction), 1), len(ordered) - 1)
    order = np.random.default_rng(SPLIT_RANDOM_STATE).permutation(len(ordered))
    test = {ordered[index] for index in order[:num_test]}
    return {"train": [i for i in ordered if i not in test], "test": [i for i in ordered if i in test]}


def write_split(directory: str | Path, split: dict[str, list[str]]) -> Path:
    """Write each split's ids, one a line, to directory/<name>.txt (atomic_write); returns
    `directory`."""
    directory = Path(directory)
    for name in SPLIT_NAMES:
        atomic_write(directory / f"{name}.txt", "".join(f"{image_id}\n" for image_id in split[name]))
    return directory


def has_split(directory: str | Path) -> bool:
    """Whether `directory` holds every file `write_split` writes."""
    return all((Path(directory) / f"{name}.txt").is_file() for name in SPLIT_NAMES)


def folder_split(folder: VOCFolder, name: str, val_fraction: float,
                 split_dir: str | Path | None = None) -> VOCSplit:
    """Split `name` ("train" or "test") of a folder without split files: the ids listed in
    split_dir/<name>.txt when `split_dir` is set, else those `split_ids` gives.

    Raises:
        DataError: split_dir lacks the file, or the folder has no XML files.
    """
    split_file = None
    if split_dir is not None:
        split_file = Path(split_dir) / f"{name}.txt"
        if not split_file.is_file():
            raise DataError(f"Split file not found: {split_file} (data.split_dir; training "
                            "writes the split of a folder without ImageSets/Main there)",
                            "missing split file", split_file)
        ids = read_split(split_file)
    else:
        ids = split_ids(annotated_ids(folder), val_fraction)[name]
    return VOCSplit(f"{folder.root.name}/{name}", folder.annotations, folder.images, tuple(ids),
                    split_file=split_file)


def listed_split(folder: VOCFolder, name: str) -> VOCSplit:
    """Split `name` of a folder with ImageSets/Main/<name>.txt.

    Raises:
        DataError: the file does not exist (the message lists the splits there are).
    """
    split_file = folder.split_files / f"{name}.txt"
    if not split_file.is_file():
        found = sorted(path.stem for path in folder.split_files.glob("*.txt"))
        raise DataError(f"VOC split file not found: {split_file}; {folder.split_files} has "
                        f"{', '.join(found) or 'no split files'} (the split names come from "
                        "data.train_sets / data.test_sets)", "missing split file", split_file)
    return VOCSplit(f"{folder.root.name}/{name}", folder.annotations, folder.images,
                    tuple(read_split(split_file)), split_file=split_file)
