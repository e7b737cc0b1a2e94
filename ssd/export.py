"""ONNX (dynamic batch) and TorchScript export of a trained SSD, its metadata, and its check.

    wrapper = ExportedSSD(model, cfg.model.variances, postprocess_settings(cfg)).eval()
    metadata = deployment_metadata(cfg, wrapper.postprocess)
    export(wrapper, cfg.model.image_size, Path("ssd.onnx"), metadata=metadata)  # -> "dynamo"
    differences = verify_export(wrapper, Path("ssd.onnx"), "onnx", cfg.model.image_size, cfg.data.mean)

Input:
    images   float32 [B, 3, S, S]: what `ssd.data.BaseTransform` makes of a BGR image (as OpenCV
             reads it): resized to S x S, channels in **RGB** order, minus the mean pixel
             (data.mean, given in BGR order, reversed with the channels), exactly what the
             PyTorch model takes. `example_batch` builds it with that transform.
Outputs:
    boxes    float32 [B, P, 4]: every prior's box decoded, (x1, y1, x2, y2) normalised
             (not clipped).
    scores   float32 [B, P, C]: softmax class probabilities; column 0 is the background.
With post-processing (`postprocess_settings`) also the detections, by the rule of
ssd.postprocess.detect with the config's test.* settings (per class: scores > score_threshold,
the candidates_per_class best go into NMS; then the top_k best per image):
    det_boxes       float32 [B, K, 4]  (x1, y1, x2, y2) normalised; K = test.top_k
    det_scores      float32 [B, K]     sorted, highest first
    det_labels      int64   [B, K]     0-based foreground class
    num_detections  int64   [B]        rows past it are padding (box 0, score 0, label -1)
NMS is the ONNX NonMaxSuppression operator (opset >= 11), which runs per image and per class
in one node, so the batch stays dynamic.

Exporters: "dynamo" (torch.onnx.export(dynamo=True), needs `onnxscript`), "torchscript" (the
older TorchScript-based ONNX exporter), or "auto": dynamo, falling back to torchscript with a
warning when dynamo fails on the model. All need the `onnx` package; the check needs
`onnxruntime`. A missing package raises `MissingPackageError` with the install command
(`install_command`). `deployment_metadata` is stored in the file's metadata_props.

TorchScript (`export_torchscript`): torch.jit.trace of the same network without
post-processing, the same inputs and outputs, the metadata as the extra file
"ssd_metadata.json" (torch.jit.load(path, _extra_files={"ssd_metadata.json": ""})).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision
from torch import nn

import ssd
from ssd.box_utils import decode
from ssd.config import Config
from ssd.data import BaseTransform, class_names_for
from ssd.fileio import atomic_write, staged_output
from ssd.images import MAX_INPUT_RATIO, network_input
from ssd.runtimes import require_packages

logger = logging.getLogger(__name__)

OUTPUTS = ["boxes", "scores"]
POSTPROCESS_OUTPUTS = ["det_boxes", "det_scores", "det_labels", "num_detections"]
MIN_NMS_OPSET = 11  # ONNX NonMaxSuppression with the inputs used here
TORCHSCRIPT_OPSET = 17  # default of the TorchScript fallback
EXAMPLE_BATCH = 2  # export example; a batch of 1 would make the exporter specialise on it
EXPORTERS = ("auto", "dynamo", "torchscript")
FORMATS = ("onnx", "torchscript", "openvino")
TORCHSCRIPT_METADATA_FILE = "ssd_metadata.json"  # extra file of a TorchScript export
# What each optional package is needed for (the error names it).


def _torch_onnx_constant(name: str, fallback: int) -> int:
    """An opset bound of the installed torch.onnx (fallback: torch 2.14's value)."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return fallback
    return getattr(_constants, name, fallback)


MIN_OPSET = _torch_onnx_constant("ONNX_MIN_OPSET", 7)
MAX_OPSET = _torch_onnx_constant("ONNX_MAX_OPSET", 23)
TORCHSCRIPT_MAX_OPSET = _torch_onnx_constant("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


# ---------------------------------------------------------------- NMS as one custom op
@torch.library.custom_op("ssd_export::class_nms", mutates_args=())
def class_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_per_class: int,
) -> torch.Tensor:
    """Per image and class NMS with the semantics of ONNX NonMaxSuppression (exported as it).

    Args:
        boxes: [B, P, 4] xyxy.
        scores: [B, C, P]; only scores > score_threshold take part.
        iou_threshold: a box is suppressed by a better one of its class when IoU > this.
        score_threshold: see scores.
        max_per_class: at most this many kept boxes per image and class.

    Returns:
        [K, 3] int64 rows (image, class, box), per image and class by decreasing score.
    """
    selected = []
    for image in range(scores.shape[0]):
        for cls in range(scores.shape[1]):
            candidates = torch.nonzero(scores[image, cls] > score_threshold).flatten()
            order = torchvision.ops.nms(boxes[image, candidates], scores[image, cls, candidates],
                                        iou_threshold)
            keep = candidates[order[:max_per_class]]
            selected.append(torch.stack([torch.full_like(keep, image), torch.full_like(keep, cls),
                                         keep], dim=1))  # (k, 3)
    return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.long)


@class_nms.register_fake
def _class_nms_fake(boxes, scores, iou_threshold, score_threshold, max_per_class):
    count = torch.library.get_ctx().new_dynamic_size()  # data-dependent number of kept boxes
    return boxes.new_empty((count, 3), dtype=torch.long)


def _class_nms_onnxscript():
    """The ONNX translation of `class_nms` for the torch.export-based exporter."""
    from onnxscript import opset18 as op

    def translation(boxes, scores, iou_threshold: float, score_threshold: float,
                    max_per_class: int):
        return op.NonMaxSuppression(
            boxes, scores,
            op.Constant(value_ints=[max_per_class]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
        )

    return translation


def _class_nms_torchscript(g, boxes, scores, iou_threshold, score_threshold, max_per_class):
    """The ONNX translation of `class_nms` for the TorchScript exporter."""
    from torch.onnx import symbolic_helper

    def constant(value, kind: str):
        value = symbolic_helper._parse_arg(value, kind)
        dtype = torch.float32 if kind == "f" else torch.int64
        return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

    return g.op("NonMaxSuppression", boxes, scores, constant(max_per_class, "i"),
                constant(iou_threshold, "f"), constant(score_threshold, "f"))


# ------------------------------------------------------------------- exported module
def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    nms_threshold: float,
    top_k: int,
    candidates_per_class: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections as fixed-size tensors (the rule of ssd.postprocess.detect).

    Args:
        boxes: [B, P, 4] decoded xyxy.
        scores: [B, P, C] softmax probabilities, class 0 = background.

    Returns:
        det_boxes [B, K, 4], det_scores [B, K], det_labels [B, K] (0-based foreground class,
        -1 for padding), num_detections [B]; K = min(top_k, (C - 1) * P). As in `detect`,
        top_k <= 0 or candidates_per_class <= 0 mean no limit.
    """
    foreground = scores[..., 1:].transpose(1, 2)  # (B, P, C) -> (B, C-1, P)
    num_classes, num_priors = foreground.shape[1], foreground.shape[2]
    candidates = _limit(candidates_per_class, num_priors)
    best_priors = foreground.topk(candidates, dim=-1).indices  # (B, C-1, candidates)
    is_best = torch.zeros_like(foreground, dtype=torch.bool).scatter(
        -1, best_priors, torch.ones_like(best_priors, dtype=torch.bool))  # (B, C-1, P)
    is_candidate = is_best & (foreground > score_threshold)  # (B, C-1, P)
    masked = torch.where(is_candidate, foreground, torch.full_like(foreground, -1.0))
    selected = torch.ops.ssd_export.class_nms(boxes, masked, nms_threshold, score_threshold,
                                              candidates)  # (K_all, 3): image, class, prior
    image, cls, prior = selected.unbind(1)
    kept = torch.full_like(foreground, -1.0).index_put((image, cls, prior),
                                                       foreground[image, cls, prior])
    count = _limit(top_k, num_classes * num_priors)
    best, index = kept.flatten(1).topk(count, dim=1)  # (B, C-1, P) -> (B, (C-1)*P) -> (B, K)
    valid = best >= 0
    labels = (index // num_priors).masked_fill(~valid, -1)
    best_prior = (index % num_priors)[..., None].expand(-1, -1, 4)  # (B, K, 4)
    det_boxes = boxes.gather(1, best_prior)
    det_boxes = torch.where(valid[..., None], det_boxes, torch.zeros_like(det_boxes))
    return det_boxes, best.clamp(min=0), labels, valid.sum(dim=1)


def _limit(requested: int, available: int) -> int:
    """`requested` capped at `available`; <= 0 means all."""
    return available if requested <= 0 else min(requested, available)


class ExportedSSD(nn.Module):
    """The SSD with box decoding and softmax (and optionally NMS) in the graph.

    forward(images [B, 3, S, S]) -> boxes [B, P, 4] xyxy, scores [B, P, C]
    (+ det_boxes, det_scores, det_labels, num_detections with `postprocess`).
    """

    def __init__(self, model: nn.Module, variances, postprocess: dict | None = None):
        super().__init__()
        self.model = model
        self.variances = tuple(variances)
        self.postprocess = postprocess

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loc, conf = self.model(images)  # [B, P, 4], [B, P, C]
        boxes = decode(loc, self.model.priors, self.variances)  # [B, P, 4] xyxy
        scores = conf.softmax(dim=-1)  # [B, P, C]
        if self.postprocess is None:
            return boxes, scores
        return (boxes, scores, *select_detections(boxes, scores, **self.postprocess))

    def output_names(self) -> list[str]:
        return OUTPUTS + (POSTPROCESS_OUTPUTS if self.postprocess is not None else [])


def postprocess_settings(cfg: Config) -> dict:
    """The config's test.* settings as `select_detections` arguments."""
    test = cfg.test
    return {"score_threshold": test.score_threshold, "nms_threshold": test.nms_threshold,
            "top_k": test.top_k, "candidates_per_class": test.candidates_per_class}


# ------------------------------------------------------------------------- export
def required_packages(export_format: str = "onnx", exporter: str = "auto",
                      check: bool = True, int8: bool = False) -> list[str]:
    """The optional packages of the `onnx` extra an export needs: onnx (and onnxscript for the
    dynamo or auto exporter) to write ONNX, onnxruntime to check it or to quantize it (`int8`);
    a TorchScript export needs none. An OpenVINO export is written from an ONNX file (the
    `openvino` package itself is the `openvino` extra's)."""
    if export_format == "torchscript":
        return []
    packages = ["onnx"] + (["onnxscript"] if exporter in ("auto", "dynamo") else [])
    needs_onnxruntime = int8 or (check and export_format == "onnx")
    return packages + (["onnxruntime"] if needs_onnxruntime else [])


def deployment_metadata(cfg, postprocess: dict | None) -> dict[str, str]:
    """What a deployer needs besides the graph, as strings (ONNX metadata_props).

    Keys: class_names (JSON, foreground classes in label order: det_labels k, scores column
    k + 1), input_* (name, size, layout, dtype, channel order, mean in that order, scale),
    resize (how an image becomes S x S), box_format, outputs, postprocess ("true"/"false";
    when true also score_threshold, nms_threshold, top_k, candidates_per_class), ssd_version.
    """
    size = cfg.model.image_size
    mean_rgb = [float(value) for value in reversed(cfg.data.mean)]  # data.mean is BGR
    metadata = {
        "class_names": json.dumps(class_names_for(cfg)),
        "input_name": "images",
        "input_size": str(size),
        "input_layout": "NCHW",
        "input_dtype": "float32",
        "input_channel_order": "RGB",
        "input_mean": json.dumps(mean_rgb),
        "input_scale": "1 (pixel values 0-255 minus input_mean, not divided by 255)",
        "resize": (f"BGR image sides over {MAX_INPUT_RATIO * size} px first shrunk to at most "
                   f"that with cv2.INTER_AREA, then cv2.resize to {size}x{size} (aspect ratio "
                   "not kept) with cv2.INTER_LINEAR"),
        "box_format": "x1,y1,x2,y2 normalised to the image width and height, not clipped",
        "outputs": ("boxes [B,P,4], scores [B,P,C] (softmax, column 0 background)"
                    + ("; det_boxes [B,K,4], det_scores [B,K] (highest first), det_labels [B,K] "
                       "(int64, index into class_names, -1 padding), num_detections [B] (int64)"
                       if postprocess is not None else "")),
        "postprocess": "true" if postprocess is not None else "false",
        "ssd_version": ssd.__version__,
    }
    metadata.update({key: str(value) for key, value in (postprocess or {}).items()})
    return metadata


def write_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store `metadata` in the ONNX file's metadata_props (replacing keys of the same name);
    the file is rewritten atomically."""
    import onnx

    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write(path, model.SerializeToString())


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict."""
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


def supported_opsets(exporter: str) -> range:
    """The ONNX opsets torch.onnx exports with `exporter` ("auto" tries the torch.export-based
    one first: its range)."""
    return range(MIN_OPSET, (TORCHSCRIPT_MAX_OPSET if exporter == "torchscript" else MAX_OPSET) + 1)


def check_export_options(postprocess: bool, opset: int | None, exporter: str) -> None:
    """Raise ValueError naming the value and what is expected for an unknown exporter, an
    opset outside `supported_opsets`, or post-processing with an opset below 11."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    if opset is None:
        return
    opsets = supported_opsets(exporter)
    if opset not in opsets:
        raise ValueError(f"--opset {opset}: torch.onnx exports opsets {opsets.start} to "
                         f"{opsets.stop - 1} with the {exporter} exporter")
    if postprocess and opset < MIN_NMS_OPSET:
        raise ValueError(f"--with-postprocess needs --opset >= {MIN_NMS_OPSET} "
                         f"(NonMaxSuppression), got {opset}")


def export(
    wrapper: ExportedSSD, image_size: int, out: Path, opset: int | None = None,
    exporter: str = "auto", metadata: dict[str, str] | None = None,
) -> str:
    """Write `wrapper` (inputs [B, 3, image_size, image_size]) to `out` as ONNX with a dynamic
    batch and `metadata` in its metadata_props; returns the exporter used ("dynamo" or
    "torchscript"). The file is written under a temporary name beside `out` and renamed when
    complete: on failure an existing `out` is left as it was.

    Raises:
        ValueError: an unknown exporter, an opset torch.onnx does not export, or
            post-processing with an opset below 11 (`check_export_options`).
        MissingPackageError: onnx, or onnxscript for the dynamo/auto exporter, is missing.
        OSError: `out` cannot be written (named, see `ssd.fileio.describe_os_error`).
    """
    check_export_options(wrapper.postprocess is not None, opset, exporter)
    require_packages(required_packages("onnx", exporter, check=False))
    example = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size)
    with staged_output(out) as staged:
        used = _export_to(wrapper, example, staged, opset, exporter)
        if metadata:
            write_onnx_metadata(staged, metadata)
    return used


def _export_to(wrapper: ExportedSSD, example: torch.Tensor, out: Path, opset: int | None,
               exporter: str) -> str:
    """`export`'s exporter choice, writing to `out`; returns the exporter used."""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(wrapper, example, out, opset)
            return "dynamo"
        except OSError:  # the file cannot be written: no other exporter would write it
            raise
        except Exception as err:  # an operator or shape the dynamo exporter cannot translate
            if exporter == "dynamo":
                raise
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            logger.warning("torch.export-based exporter failed (%s: %s); using the TorchScript "
                           "exporter", type(err).__name__, first_line)
    _export_torchscript(wrapper, example, out, opset or TORCHSCRIPT_OPSET)
    return "torchscript"


def _export_dynamo(wrapper: ExportedSSD, example: torch.Tensor, out: Path, opset: int | None):
    # onnx_ir warns about an empty attribute list (harmless) and onnxscript's optimiser logs
    # every constant it does not fold: only their errors are worth showing.
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger_.level for logger_ in quiet]
    for logger_ in quiet:
        logger_.setLevel(logging.ERROR)
    try:
        torch.onnx.export(
            wrapper, (example,), str(out), dynamo=True, opset_version=opset,
            input_names=["images"], output_names=wrapper.output_names(),
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            custom_translation_table={
                torch.ops.ssd_export.class_nms.default: _class_nms_onnxscript()
            },
            external_data=False, verbose=False,
        )
    finally:
        for logger_, level in zip(quiet, levels):
            logger_.setLevel(level)


def _export_torchscript(wrapper: ExportedSSD, example: torch.Tensor, out: Path, opset: int):
    import warnings

    torch.onnx.register_custom_op_symbolic("ssd_export::class_nms", _class_nms_torchscript,
                                           MIN_NMS_OPSET)
    names = wrapper.output_names()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of this exporter
        torch.onnx.export(
            wrapper, (example,), str(out), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
        )


def export_torchscript(wrapper: ExportedSSD, image_size: int, out: Path,
                       metadata: dict[str, str] | None = None) -> None:
    """Write torch.jit.trace of `wrapper` (images [B, 3, S, S] -> boxes [B, P, 4], scores
    [B, P, C]; any batch size) to `out`, with `metadata` as the extra file
    TORCHSCRIPT_METADATA_FILE (JSON).

    Raises:
        ValueError: `wrapper` has post-processing (its NMS is an operator of this package that a
            TorchScript runtime would not have; export it to ONNX instead).
    """
    if wrapper.postprocess is not None:
        raise ValueError("--with-postprocess is for --format onnx only: the TorchScript export "
                         "is the network without NMS (boxes, scores)")
    import warnings

    example = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size)
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata or {})}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        atomic_write(out, lambda stream: torch.jit.save(traced, stream, _extra_files=extra))


# -------------------------------------------------------------------------- check
def synthetic_image(size: int) -> np.ndarray:
    """A deterministic uint8 BGR test image [size, size, 3]: a gradient and two rectangles."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                      np.full((size, size), 128, np.float32)], axis=-1)  # (S, S, 3)
    image[size // 5 : size // 2, size // 6 : size // 2] = (30, 200, 240)
    image[size // 2 : 4 * size // 5, size // 2 : 5 * size // 6] = (220, 40, 60)
    return image.astype(np.uint8)


def example_batch(image_bgr: np.ndarray, size: int, mean: Sequence[float]) -> torch.Tensor:
    """uint8 [H, W, 3] BGR image -> [2, 3, S, S] network input of it and its mirror, made by
    the evaluation's own transform (`ssd.images.network_input`: RGB minus the mean)."""
    inputs = network_input(image_bgr, BaseTransform(size, mean))  # [S, S, 3] RGB
    tensor = torch.from_numpy(inputs).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    return torch.stack([tensor, tensor.flip(-1)])


def onnxruntime_differences(wrapper: ExportedSSD, onnx_path: Path, images: torch.Tensor) -> dict:
    """`runtime_differences` of the ONNX file at `onnx_path` run by onnxruntime."""
    from ssd.runtimes import onnxruntime_runner

    return runtime_differences(wrapper, onnxruntime_runner(onnx_path), images, "onnxruntime")


def runtime_differences(wrapper: ExportedSSD, run, images: torch.Tensor,
                        runtime: str = "the runtime") -> dict:
    """Differences between a runtime and PyTorch, over batches of 1 and all `images`.

    run: images ndarray [B, 3, S, S] -> the outputs of `wrapper.output_names()`, in order.
    boxes, scores: max |runtime - torch| / max(1, |torch|): absolute for normalised coordinates
        and probabilities, relative for the far-off boxes an untrained model predicts.
    detections (with NMS): PyTorch's `select_detections` on the runtime's own boxes and scores
        against the runtime's detections, each detection paired with the closest one of its
        class (so equal scores may come in either order); the worst pair's box/score gap.
        Detections tied with the last one kept at top_k are left out.
    num_detections: the largest difference in the number of detections.
    """
    names = wrapper.output_names()
    differences = dict.fromkeys(OUTPUTS, 0.0)
    for batch in (images[:1], images):  # two batch sizes: the batch dimension is dynamic
        with torch.no_grad():
            ours = dict(zip(names, wrapper(batch)))
        outputs = run(batch.numpy())
        theirs = {name: torch.from_numpy(np.asarray(value)) for name, value in zip(names, outputs)}
        for name in names:
            if ours[name].shape != theirs[name].shape:
                raise AssertionError(f"{name}: {runtime} shape {list(theirs[name].shape)} vs "
                                     f"PyTorch {list(ours[name].shape)} at batch {len(batch)}")
        found = {name: _scaled_difference(theirs[name], ours[name]) for name in OUTPUTS}
        if wrapper.postprocess is not None:
            reference = select_detections(theirs["boxes"], theirs["scores"], **wrapper.postprocess)
            found.update(_detection_differences(dict(zip(POSTPROCESS_OUTPUTS, reference)), theirs))
        differences = {name: max(differences.get(name, 0.0), value) for name, value in found.items()}
    return differences


def _scaled_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, |expected|) over all elements (0 when empty)."""
    actual, expected = actual.double(), expected.double()
    scaled = (actual - expected).abs() / expected.abs().clamp(min=1.0)
    return scaled.max().item() if scaled.numel() else 0.0


def _detection_differences(expected: dict, actual: dict) -> dict[str, float]:
    """{"detections": worst paired gap, "num_detections": worst count difference}."""
    counts = (expected["num_detections"] - actual["num_detections"]).abs()
    worst = 0.0
    for image in range(len(counts)):
        rows = [_valid_rows(output, image) for output in (expected, actual)]
        for first, second in (rows, rows[::-1]):
            worst = max(worst, _worst_pair_gap(*first, *second))
    return {"detections": worst, "num_detections": float(counts.max())}


def _valid_rows(output: dict, image: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes [n, 4], scores [n], labels [n]) of one image, without padding and without the
    detections tied (within 1e-6) with the last one when top_k cut the list."""
    count = int(output["num_detections"][image])
    scores = output["det_scores"][image, :count].double()
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count == output["det_scores"].shape[1] and count:  # truncated at top_k
        keep = scores > scores[-1] + 1e-6
    return (output["det_boxes"][image, :count][keep].double(), scores[keep],
            output["det_labels"][image, :count][keep])


def _worst_pair_gap(boxes, scores, labels, other_boxes, other_scores, other_labels) -> float:
    """Pair every detection with the closest of its class among the others; the worst gap.

    Gap = max(box difference scaled as in `_scaled_difference`, score difference); inf when a
    detection has no counterpart of its class.
    """
    if not len(scores):
        return 0.0
    box_gap = (boxes[:, None] - other_boxes[None]).abs() / other_boxes[None].abs().clamp(min=1.0)
    gap = torch.maximum(box_gap.amax(dim=-1), (scores[:, None] - other_scores[None]).abs())  # (n, m)
    gap = gap.masked_fill(labels[:, None] != other_labels[None], float("inf"))
    if gap.shape[1] == 0:
        return float("inf")
    return gap.min(dim=1).values.max().item()


def torchscript_differences(wrapper: ExportedSSD, path: Path, images: torch.Tensor) -> dict:
    """max |loaded - eager| / max(1, |eager|) of boxes and scores (as `_scaled_difference`)
    of the TorchScript file at `path`, loaded with torch.jit.load, over batches of 1 and all
    `images` [B, 3, S, S]."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        traced = torch.jit.load(str(path), map_location="cpu")
    differences = dict.fromkeys(OUTPUTS, 0.0)
    for batch in (images[:1], images):
        # the plain interpreter: the optimising one spends seconds on its first calls
        with torch.no_grad(), torch.jit.optimized_execution(False):
            pairs = zip(OUTPUTS, traced(batch), wrapper(batch))
            for name, loaded, eager in pairs:
                differences[name] = max(differences[name], _scaled_difference(loaded, eager))
    return differences


def verify_export(wrapper: ExportedSSD, path: Path, export_format: str, image_size: int,
                  mean: Sequence[float], image: np.ndarray | None = None) -> dict:
    """The file at `path` against PyTorch on `image` (uint8 [H, W, 3] BGR; default
    `synthetic_image`) and its mirror: `runtime_differences` under onnxruntime for "onnx",
    under OpenVINO computing in float32 for "openvino" (needs onnxruntime / openvino:
    MissingPackageError), `torchscript_differences` for "torchscript"."""
    image = synthetic_image(image_size) if image is None else image
    images = example_batch(image, image_size, mean)
    if export_format == "torchscript":
        return torchscript_differences(wrapper, path, images)
    if export_format == "openvino":
        from ssd.runtimes import openvino_runner

        return runtime_differences(wrapper, openvino_runner(path, "f32"), images, "OpenVINO")
    require_packages(["onnxruntime"])
    return onnxruntime_differences(wrapper, path, images)
