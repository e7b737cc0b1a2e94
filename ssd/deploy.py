"""Files that run fast on CPUs: INT8 ONNX (static post-training quantization) and OpenVINO IR.

    images = calibration_images(cfg, count=100)            # [N, 3, S, S] float32 training images
    quantize_onnx(Path("ssd.onnx"), Path("ssd_int8.onnx"), images)
    to_openvino(Path("ssd.onnx"), Path("ssd.xml"), metadata)  # ssd.xml + ssd.bin
    read_openvino_metadata(Path("ssd.xml"))["class_names"]

Both start from the ONNX file of `ssd.export.export` (inputs and outputs documented there) and
keep its inputs, outputs and metadata: the INT8 ONNX file keeps metadata_props, the OpenVINO
IR holds the same keys in its rt_info under RT_INFO_SECTION.

INT8 (onnxruntime.quantization.quantize_static, QDQ format): the convolutions' weights are
quantized per output channel to int8, their inputs per tensor to uint8 with ranges measured
(min-max) on calibration images: training images made into network inputs by the evaluation's
transform. Only convolutions are quantized: box decoding, softmax and NMS stay in float32, as
normalised coordinates and probabilities lose too much at 8 bits. OpenVINO reads the QDQ
model and runs the convolutions in int8 (the INT8 IR is converted from the INT8 ONNX file).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ssd.fileio import publish_staged
from ssd.runtimes import INPUT_NAME, require_packages

DEFAULT_CALIBRATION_IMAGES = 100
DEPLOY_FORMATS = ("onnx", "openvino")
QUANTIZED_OPS = ["Conv"]
RT_INFO_SECTION = "ssd_metadata"  # rt_info key of the OpenVINO IR holding deployment_metadata
CALIBRATION_BATCH = 8  # images per calibration call


def export_deployment(wrapper, image_size: int, out: Path, export_format: str,
                      metadata: dict[str, str], calibration: torch.Tensor | None = None,
                      opset: int | None = None, exporter: str = "auto") -> str:
    """Write `wrapper` (an `ssd.export.ExportedSSD`) to `out` as "onnx" or "openvino" (IR:
    out must end in .xml), INT8 when `calibration` images [N, 3, S, S] are given, with
    `metadata`; returns how it was made ("ONNX, dynamo exporter, INT8 (QDQ, 100 calibration
    images)"). Intermediate files live in a temporary folder beside `out`; `out` appears only
    when complete.

    Raises:
        ValueError: an unknown format, a bad opset or exporter (`ssd.export.export`), an
            OpenVINO output not named .xml.
        MissingPackageError: a package the format needs is missing.
    """
    from ssd.export import export

    if export_format not in DEPLOY_FORMATS:
        raise ValueError(f"format {export_format!r}: expected one of {', '.join(DEPLOY_FORMATS)}")
    out = Path(out)
    if export_format == "openvino" and out.suffix != ".xml":
        raise ValueError(f"--output {out}: an OpenVINO model is written as NAME.xml (+ NAME.bin)")
    if export_format == "onnx" and calibration is None:
        return f"ONNX, {export(wrapper, image_size, out, opset, exporter, metadata)} exporter"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:
        onnx_path = Path(folder) / "fp32.onnx"
        how = f"{export(wrapper, image_size, onnx_path, opset, exporter, metadata)} exporter"
        if calibration is not None:
            quantized = out if export_format == "onnx" else Path(folder) / "int8.onnx"
            quantize_onnx(onnx_path, quantized, calibration)
            onnx_path = quantized
            how += f", INT8 (QDQ, {len(calibration)} calibration images)"
        if export_format == "openvino":
            to_openvino(onnx_path, out, metadata)
            return f"OpenVINO IR from ONNX, {how}"
    return f"ONNX, {how}"


def calibration_images(cfg, count: int = DEFAULT_CALIBRATION_IMAGES) -> torch.Tensor:
    """`count` training images of `cfg` as network inputs [N, 3, S, S] float32 (the evaluation
    transform: resized, RGB minus the mean), evenly spread over the training set; N = min(count,
    images in the set).

    Raises:
        ValueError: count < 1.
    """
    from ssd.data import build_dataset, build_transform
    from ssd.data.loader import TransformedDataset

    if count < 1:
        raise ValueError(f"--calib {count}: expected at least 1 calibration image")
    dataset = TransformedDataset(build_dataset(cfg, train=True), build_transform(cfg, train=False))
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    return torch.stack([dataset[int(index)][0] for index in np.unique(picks)])


def quantize_onnx(fp32_path: Path, out: Path, images: torch.Tensor) -> None:
    """Write the INT8 (QDQ) form of the ONNX file `fp32_path` to `out`, calibrated on
    `images` [N, 3, S, S]; the metadata_props are kept. Written under a temporary name and
    renamed when complete.

    Raises:
        MissingPackageError: onnx or onnxruntime is missing.
    """
    from ssd.export import read_onnx_metadata, write_onnx_metadata

    require_packages(["onnx", "onnxruntime"])
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        """The calibration images [N, 3, S, S] in batches, one pass."""

        def __init__(self):
            self.batches = iter(images.split(CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    reader = Reader()
    metadata = read_onnx_metadata(fp32_path)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:
        staged = Path(folder) / out.name
        quantize_static(str(fp32_path), str(staged), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        write_onnx_metadata(staged, metadata)  # quantize_static drops metadata_props
        publish_staged(staged, out)


def to_openvino(onnx_path: Path, out_xml: Path, metadata: dict[str, str]) -> Path:
    """Convert the ONNX file `onnx_path` to OpenVINO IR `out_xml` (+ the weights beside it, same
    name with .bin), weights kept in float32, `metadata` in rt_info[RT_INFO_SECTION]. Both
    files are written in a temporary folder and moved in place when complete (.bin first).
    Returns the .bin path.

    Raises:
        ValueError: `out_xml` does not end in .xml.
        MissingPackageError: openvino is missing.
    """
    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise ValueError(f"--output {out_xml}: an OpenVINO model is written as NAME.xml (+ NAME.bin)")
    require_packages(["openvino"], extra="openvino")
    import openvino

    model = openvino.convert_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    out_bin = out_xml.with_suffix(".bin")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out_xml.name}.", dir=out_xml.parent))
    try:
        openvino.save_model(model, str(folder / out_xml.name), compress_to_fp16=False)
        publish_staged(folder / out_bin.name, out_bin)
        publish_staged(folder / out_xml.name, out_xml)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out_bin


def read_openvino_metadata(xml_path: Path) -> dict[str, str]:
    """The deployment metadata stored in an OpenVINO IR's rt_info by `to_openvino`."""
    import openvino

    model = openvino.Core().read_model(str(xml_path))
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info()[RT_INFO_SECTION]
    return {key: section[key].astype(str) for key in section}


def file_size(path: Path) -> int:
    """Bytes of a model file; for an OpenVINO .xml, together with its .bin."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size
