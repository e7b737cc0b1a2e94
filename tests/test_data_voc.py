"""VOCDataset: parsing of hand-written XML, several years, and every bad-input case."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd.data import DataError, VOCDataset, parse_voc_xml
from ssd.data.voc import VOC_CLASSES

LABEL = {name: i for i, name in enumerate(VOC_CLASSES)}

@pytest.fixture(autouse=True)
def info_logs(caplog):
    """Data set summaries and generation messages are logged at INFO by the ssd.data loggers."""
    caplog.set_level(logging.INFO, logger="ssd")



def obj(name: str, box, difficult: int | None = 0, truncated: int | None = 0) -> str:
    """One <object> element; None leaves the flag out."""
    flags = ""
    if difficult is not None:
        flags += f"<difficult>{difficult}</difficult>"
    if truncated is not None:
        flags += f"<truncated>{truncated}</truncated>"
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><pose>Left</pose>{flags}<bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def xml(width: int, height: int, *objects: str) -> str:
    return (f"<annotation><folder>VOC</folder><filename>x.jpg</filename><size><width>{width}"
            f"</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{''.join(objects)}</annotation>")


def write_year(root: Path, year: str, split: str, items: dict, colour_base: int = 0) -> None:
    """items: image id -> XML text (or None: no annotation file). Images are solid colours
    (colour_base + k, 0, 0) of the XML's size (40x30 when there is no XML)."""
    base = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_id, text) in enumerate(items.items()):
        width, height = 40, 30
        if text is not None:
            (base / "Annotations" / f"{image_id}.xml").write_text(text)
            size = parse_size(text)
            width, height = size if size else (width, height)
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :, 0] = colour_base + k
        cv2.imwrite(str(base / "JPEGImages" / f"{image_id}.png"), image)  # lossless
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")


def parse_size(text: str):
    try:
        width = int(text.split("<width>")[1].split("<")[0])
        height = int(text.split("<height>")[1].split("<")[0])
        return width, height
    except (IndexError, ValueError):
        return None


@pytest.fixture
def two_years(tmp_path):
    write_year(tmp_path, "2007", "trainval", {
        "000001": xml(100, 50, obj("dog", (11, 6, 60, 45), difficult=1),
                      obj("person", (1, 1, 100, 50), truncated=1),
                      obj("car", (21.5, 11, 41, 31), difficult=None, truncated=None)),
        "000002": xml(80, 40, obj("cat", (2, 3, 40, 20))),
    }, colour_base=10)
    write_year(tmp_path, "2012", "trainval", {
        "2008_000003": xml(64, 48, obj("tvmonitor", (5, 5, 20, 30))),
    }, colour_base=50)
    return tmp_path


def test_parse_coordinates_difficult_truncated(two_years):
    ds = VOCDataset(two_years, [("2007", "trainval")], verbose=False)
    assert len(ds) == 2 and ds.class_names == list(VOC_CLASSES)
    ann = ds.get_annotation(0)
    assert ann["image_id"] == "VOC2007/000001" and (ann["width"], ann["height"]) == (100, 50)
    np.testing.assert_array_equal(ann["boxes"], [[11, 6, 60, 45], [1, 1, 100, 50],
                                                 [21.5, 11, 41, 31]])
    np.testing.assert_array_equal(ann["labels"], [LABEL["dog"], LABEL["person"], LABEL["car"]])
    np.testing.assert_array_equal(ann["difficult"], [True, False, False])
    np.testing.assert_array_equal(ann["truncated"], [False, True, False])

    image, target = ds[0]  # difficult dog left out; (value - 1) / size
    assert image.shape == (50, 100, 3) and image.dtype == np.uint8
    assert target.dtype == np.float32 and target.shape == (2, 5)
    np.testing.assert_allclose(target, [[0 / 100, 0 / 50, 99 / 100, 49 / 50, LABEL["person"]],
                                        [20.5 / 100, 10 / 50, 40 / 100, 30 / 50, LABEL["car"]]],
                               rtol=0, atol=1e-7)
    keep = VOCDataset(two_years, [("2007", "trainval")], keep_difficult=True, verbose=False)
    np.testing.assert_allclose(keep[0][1][0], [0.1, 0.1, 0.59, 0.88, LABEL["dog"]], atol=1e-7)


def test_multiple_years_ids_and_images(two_years, caplog):
    ds = VOCDataset(two_years, [["2007", "trainval"], [2012, "trainval"]])
    assert ds.image_ids == ["VOC2007/000001", "VOC2007/000002", "VOC2012/2008_000003"]
    blue = [int(ds[i][0][0, 0, 0]) for i in range(3)]
    assert blue == [10, 11, 50]  # each image read from its own year folder
    np.testing.assert_allclose(ds[2][1], [[4 / 64, 4 / 48, 19 / 64, 29 / 48, LABEL["tvmonitor"]]],
                               atol=1e-7)
    line = caplog.messages[-1]
    assert line == (f"VOC {two_years}: VOC2007/trainval + VOC2012/trainval: 3 images, 5 objects "
                    "(1 difficult); skipped 0")


def test_custom_class_names(tmp_path):
    write_year(tmp_path, "custom", "train", {"a": xml(20, 20, obj("bolt", (1, 1, 5, 5)),
                                                      obj("nut", (6, 6, 9, 9)))})
    ds = VOCDataset(tmp_path, [("custom", "train")], class_names=["nut", "bolt"], verbose=False)
    np.testing.assert_array_equal(ds.get_annotation(0)["labels"], [1, 0])
    assert ds.image_ids == ["VOCcustom/a"]


def test_transform_output_is_packed_as_tensors(two_years):
    def halve(image, boxes, labels):
        return np.zeros((8, 8, 3), np.float32), boxes / 2, labels

    ds = VOCDataset(two_years, [("2007", "trainval")], transform=halve, verbose=False)
    image, target = ds[1]
    assert tuple(image.shape) == (3, 8, 8)
    np.testing.assert_allclose(target.numpy(), [[0.5 / 80, 1 / 40, 19.5 / 80, 9.5 / 40,
                                                 LABEL["cat"]]], atol=1e-7)


# --- bad input --------------------------------------------------------------------------------


def test_missing_split_file_names_path_and_how_to_get_voc(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        VOCDataset(tmp_path / "VOCdevkit", [("2007", "test")])
    message = str(info.value)
    assert str(Path("VOCdevkit/VOC2007/ImageSets/Main/test.txt")) in message
    assert "VOCtrainval_06-Nov-2007.tar" in message and "data/README.md" in message


def test_missing_image(tmp_path, caplog):
    write_year(tmp_path, "2007", "test", {"1": xml(20, 20, obj("cat", (1, 1, 9, 9))),
                                          "2": xml(20, 20, obj("dog", (1, 1, 9, 9)))})
    (tmp_path / "VOC2007/JPEGImages/2.png").unlink()
    with pytest.raises(DataError, match=r"Image file not found: .*VOC2007.JPEGImages.2\.jpg"):
        VOCDataset(tmp_path, [("2007", "test")])
    ds = VOCDataset(tmp_path, [("2007", "test")], skip_bad=True)
    assert ds.image_ids == ["VOC2007/1"] and ds.report.skipped == {"missing image": 1}
    assert "skipped 1 (1 missing image; first: Image file not found" in caplog.text


def test_missing_annotation(tmp_path):
    write_year(tmp_path, "2007", "test", {"1": xml(20, 20, obj("cat", (1, 1, 9, 9))), "2": None})
    with pytest.raises(DataError, match=r"Annotation file not found: .*Annotations.2\.xml"):
        VOCDataset(tmp_path, [("2007", "test")])
    ds = VOCDataset(tmp_path, [("2007", "test")], skip_bad=True, verbose=False)
    assert len(ds) == 1 and ds.report.skipped == {"missing annotation": 1}


def test_corrupt_image_raises_on_read_or_becomes_blank(tmp_path, caplog):
    write_year(tmp_path, "2007", "test", {"1": xml(20, 10, obj("cat", (1, 1, 9, 9)))})
    bad = tmp_path / "VOC2007/JPEGImages/1.png"
    bad.write_bytes(b"\x89PNG not really an image")
    ds = VOCDataset(tmp_path, [("2007", "test")], verbose=False)
    with pytest.raises(DataError, match=r"Cannot decode image .*1\.png.*set data.skip_bad=true"):
        ds[0]
    lenient = VOCDataset(tmp_path, [("2007", "test")], skip_bad=True, verbose=False)
    image, target = lenient[0]
    lenient[0]
    assert image.shape == (10, 20, 3) and image.max() == 0 and target.shape == (0, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1.png" in warnings[0]  # once per file
    assert "data.skip_bad: using a black image" in warnings[0]
    assert "skip_bad=true" not in warnings[0]  # no advice to turn on what is on


def write_truncated_jpeg(path: Path, width: int, height: int, kept: float = 0.7) -> np.ndarray:
    """A JPEG (colour gradients) of width x height cut after `kept` of its bytes; returns the
    full image."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    image = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8)
    encoded = cv2.imencode(".jpg", image)[1].tobytes()
    path.write_bytes(encoded[:int(len(encoded) * kept)])
    return image


def test_truncated_jpeg_is_read_with_one_warning_naming_it(tmp_path, caplog):
    write_year(tmp_path, "2007", "test", {"cut": xml(80, 64, obj("cat", (1, 1, 40, 30)))})
    (tmp_path / "VOC2007/JPEGImages/cut.png").unlink()
    path = tmp_path / "VOC2007/JPEGImages/cut.jpg"
    full = write_truncated_jpeg(path, 80, 64)
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) is None  # what failed
    assert cv2.imread(str(path)) is not None
    ds = VOCDataset(tmp_path, [("2007", "test")], verbose=False)
    image, target = ds[0]
    ds[0]
    assert image.shape == (64, 80, 3) and target.shape == (1, 5)
    top = full[:8].astype(int)  # the first block row was in the kept bytes
    assert np.abs(image[:8].astype(int) - top).mean() < 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "damaged" in warnings[0]


def test_annotated_size_that_disagrees_with_the_image_uses_the_real_size(tmp_path, caplog):
    # the XML says 30x30, the image is 60x45: boxes beyond 30 px must survive, normalised by 60x45
    write_year(tmp_path, "2007", "test", {"1": xml(30, 30, obj("cat", (11, 21, 51, 41)))})
    (tmp_path / "VOC2007/JPEGImages/1.png").unlink()
    cv2.imwrite(str(tmp_path / "VOC2007/JPEGImages/1.png"), np.zeros((45, 60, 3), np.uint8))
    ds = VOCDataset(tmp_path, [("2007", "test")], verbose=False)
    image, target = ds[0]
    assert image.shape == (45, 60, 3)
    np.testing.assert_allclose(target, [[10 / 60, 20 / 45, 50 / 60, 40 / 45, LABEL["cat"]]], atol=1e-6)
    ds[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # once per file
    assert "1.xml" in warnings[0] and "1.png" in warnings[0]
    assert "30x30" in warnings[0] and "60x45" in warnings[0]


@pytest.mark.parametrize("text, field", [
    (xml(20, 20, obj("cat", (1, 1, 9, 9))).replace("<xmax>9</xmax>", ""), "<xmax>"),
    (xml(20, 20, obj("cat", (1, 1, 9, 9))).replace("<name>cat</name>", ""), "<name>"),
    ("<annotation><object><name>cat</name></object></annotation>", "<size>"),
    (xml(20, 20, obj("cat", (1, 1, 9, 9))).replace("<height>20</height>", ""), "<height>"),
    ("<annotation><size><width>20</width><height>20</height></size><object><name>cat</name>"
     "</object></annotation>", "<bndbox>"),
])
def test_xml_missing_field(tmp_path, text, field):
    write_year(tmp_path, "2007", "test", {"7": text, "8": xml(20, 20, obj("cat", (1, 1, 9, 9)))})
    with pytest.raises(DataError) as info:
        VOCDataset(tmp_path, [("2007", "test")])
    assert "7.xml" in str(info.value) and f"missing the required field {field}" in str(info.value)
    ds = VOCDataset(tmp_path, [("2007", "test")], skip_bad=True, verbose=False)
    assert ds.image_ids == ["VOC2007/8"] and ds.report.skipped == {"bad annotation": 1}


def test_not_xml(tmp_path):
    write_year(tmp_path, "2007", "test", {"7": "<annotation><size>"})
    with pytest.raises(DataError, match=r"7\.xml is not valid XML"):
        VOCDataset(tmp_path, [("2007", "test")])


def test_unknown_class_lists_known_classes(tmp_path):
    write_year(tmp_path, "2007", "test", {"1": xml(20, 20, obj("giraffe", (1, 1, 9, 9)))})
    with pytest.raises(DataError) as info:
        VOCDataset(tmp_path, [("2007", "test")], class_names=["cat", "dog"])
    message = str(info.value)
    assert "1.xml" in message and "unknown class 'giraffe'" in message
    assert "known classes: cat, dog" in message
    ds = VOCDataset(tmp_path, [("2007", "test")], class_names=["cat", "dog"], skip_bad=True,
                    verbose=False)
    assert len(ds) == 0 and ds.report.skipped == {"unknown class": 1}


def test_box_outside_image_is_clipped_and_counted(tmp_path, caplog):
    write_year(tmp_path, "2007", "test", {"1": xml(40, 20, obj("cat", (-5, 0, 50, 12)),
                                                   obj("dog", (2, 2, 10, 10)))})
    ds = VOCDataset(tmp_path, [("2007", "test")])
    assert ds.report.clipped == 1
    np.testing.assert_array_equal(ds.get_annotation(0)["boxes"][0], [1, 1, 40, 12])
    np.testing.assert_allclose(ds[0][1][0], [0, 0, 39 / 40, 11 / 20, LABEL["cat"]], atol=1e-7)
    assert "1 boxes clipped to the image" in caplog.text


def test_zero_and_negative_size_boxes_are_dropped_and_counted(tmp_path, caplog):
    write_year(tmp_path, "2007", "test", {"1": xml(40, 20, obj("cat", (5, 5, 5, 9)),
                                                   obj("dog", (9, 9, 4, 12)),
                                                   obj("cow", (50, 5, 60, 9)),  # fully outside
                                                   obj("bus", (3, 3, 8, 8)))})
    ds = VOCDataset(tmp_path, [("2007", "test")])
    assert ds.report.degenerate == 3 and ds.report.clipped == 0
    np.testing.assert_array_equal(ds.get_annotation(0)["labels"], [LABEL["bus"]])
    assert ds[0][1].shape == (1, 5)
    assert "3 zero-size boxes dropped" in caplog.text


def test_images_without_objects_kept_or_left_out(tmp_path, caplog):
    write_year(tmp_path, "2007", "trainval", {
        "1": xml(20, 20),  # no objects
        "2": xml(20, 20, obj("cat", (1, 1, 9, 9), difficult=1)),  # only a difficult one
        "3": xml(20, 20, obj("cat", (1, 1, 9, 9))),
    })
    kept = VOCDataset(tmp_path, [("2007", "trainval")], keep_empty=True, verbose=False)
    assert len(kept) == 3 and kept[0][1].shape == (0, 5)
    assert kept.get_annotation(0)["boxes"].shape == (0, 4)
    train = VOCDataset(tmp_path, [("2007", "trainval")], keep_empty=False)
    assert train.image_ids == ["VOC2007/3"] and train.report.empty_removed == 2
    assert "2 images without objects left out" in caplog.text
    with_difficult = VOCDataset(tmp_path, [("2007", "trainval")], keep_empty=False,
                                keep_difficult=True, verbose=False)
    assert with_difficult.image_ids == ["VOC2007/2", "VOC2007/3"]


def test_parse_voc_xml_returns_the_file_values(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(xml(30, 20, obj("cow", (0, -2, 35.5, 12), difficult=1, truncated=1)))
    parsed = parse_voc_xml(path, {"cow": 0})
    assert (parsed.width, parsed.height) == (30, 20)
    np.testing.assert_array_equal(parsed.boxes, [[0, -2, 35.5, 12]])  # clipping is the reader's
    assert parsed.labels.tolist() == [0] and parsed.difficult.tolist() == [True]
    assert parsed.truncated.tolist() == [True]
