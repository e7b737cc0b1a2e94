"""ssd/export.py and scripts/export_onnx.py: ONNX export with a dynamic batch, parity with
PyTorch under onnxruntime. The export needs the optional `onnx` package and the check
`onnxruntime`: tests that need them skip cleanly without them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

import ssd
from ssd import export as onnx_export
from ssd import runtimes
from ssd.box_utils import decode
from ssd.cli import export as export_cli
from ssd.cli.common import run_cli
from ssd.config import load_config
from ssd.data import SHAPES_CLASSES
from ssd.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
# fp32 (PyTorch) against fp32 (onnxruntime): the same arithmetic in other kernels, so only
# summation order differs; 1e-4 is ~1700 roundings of 2^-24, far above that and far below
# any real difference (a wrong channel order or operator moves outputs by > 1e-2).
TOLERANCE = 1e-4
SSD7_160_CONFIG = REPO_ROOT / "tests" / "configs" / "ssd7_160.yaml"  # 2116 priors


def needs_onnxruntime():
    return pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx]); CI runs this"
    )


def needs_onnx():
    """Both exporters write the file with the onnx package."""
    return pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[onnx])")


def save_checkpoint(path, overrides=(), seed=0):
    """A randomly initialised SSD7 (configs/shapes.yaml at 160 px) saved as this project's checkpoint."""
    cfg = load_config(SSD7_160_CONFIG, overrides=list(overrides))
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return model, cfg


def reference_outputs(model, cfg, images):
    """boxes [B, P, 4] and scores [B, P, C] computed straight from the PyTorch model."""
    with torch.no_grad():
        loc, conf = model(images)
    return decode(loc, model.priors, cfg.model.variances), conf.softmax(dim=-1)


def scaled_difference(actual, expected):
    """|actual - expected| / max(1, |expected|): absolute for values within [-1, 1]."""
    return ((actual - expected).abs() / expected.abs().clamp(min=1.0)).max().item()


@pytest.fixture(scope="module")
def exported_with_nms(tmp_path_factory):
    """export_onnx.py --with-postprocess on an SSD7 checkpoint, with the default exporter."""
    needs_onnxruntime()
    needs_onnx()
    folder = tmp_path_factory.mktemp("onnx")
    model, cfg = save_checkpoint(folder / "ssd7.pth")
    out = folder / "ssd7.onnx"
    code = load_script("export_onnx").main(["--weights", str(folder / "ssd7.pth"), "--out", str(out),
                                      "--with-postprocess"])
    return code, out, model, cfg


def test_export_runs_in_onnxruntime_like_pytorch(exported_with_nms):
    ort = needs_onnxruntime()
    code, out, model, cfg = exported_with_nms
    assert code == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(5)) * 60
    outputs = session.run(None, {"images": images.numpy()})  # batch 3: not the export's 2
    boxes, scores = reference_outputs(model, cfg, images)
    assert outputs[0].shape == (3, 2116, 4) and outputs[1].shape == (3, 2116, 7)
    assert scaled_difference(torch.from_numpy(outputs[0]), boxes) < TOLERANCE
    assert scaled_difference(torch.from_numpy(outputs[1]), scores) < TOLERANCE
    det_boxes, det_scores, det_labels, counts = outputs[2:]
    assert det_boxes.shape == (3, 200, 4) and det_scores.shape == (3, 200)
    assert det_labels.shape == (3, 200) and counts.shape == (3,)
    assert (det_labels[det_scores > 0] >= 0).all() and (det_labels[det_scores > 0] < 6).all()


def test_export_graph_has_a_dynamic_batch_and_nms(exported_with_nms):
    onnx = needs_onnx()
    _, out, _, _ = exported_with_nms
    graph = onnx.load(str(out)).graph
    batch_dims = [value.type.tensor_type.shape.dim[0] for value in [*graph.input, *graph.output]]
    assert all(dim.dim_param and not dim.dim_value for dim in batch_dims)
    assert [value.name for value in graph.output] == [
        "boxes", "scores", "det_boxes", "det_scores", "det_labels", "num_detections"]
    assert any(node.op_type == "NonMaxSuppression" for node in graph.node)


def test_onnx_detections_equal_pytorch_detections(exported_with_nms):
    ort = needs_onnxruntime()
    _, out, model, cfg = exported_with_nms
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(6))  # unsaturated
    outputs = [torch.from_numpy(value) for value in session.run(None, {"images": images.numpy()})]
    # The rule applied by PyTorch to onnxruntime's own boxes and scores: same detections.
    expected = onnx_export.select_detections(outputs[0], outputs[1], **onnx_export.postprocess_settings(cfg))
    counts = expected[3]
    assert torch.equal(outputs[5], counts) and (counts > 0).all()
    for image in range(2):
        n = int(counts[image])
        torch.testing.assert_close(outputs[3][image, :n], expected[1][image, :n])
        assert torch.equal(outputs[4][image, :n], expected[2][image, :n])
        torch.testing.assert_close(outputs[2][image, :n], expected[0][image, :n])
        assert (outputs[4][image, n:] == -1).all() and (outputs[3][image, n:] == 0).all()


def test_select_detections_follows_detect():
    from ssd.postprocess import detect

    generator = torch.Generator().manual_seed(7)
    priors = torch.rand(500, 4, generator=generator) * 0.5 + 0.1  # (cx, cy, w, h)
    loc = torch.randn(2, 500, 4, generator=generator) * 0.5
    conf = torch.randn(2, 500, 5, generator=generator) * 2
    settings = {"score_threshold": 0.05, "nms_threshold": 0.45, "top_k": 60,
                "candidates_per_class": 40}
    boxes = decode(loc, priors, (0.1, 0.2))
    det_boxes, det_scores, det_labels, counts = onnx_export.select_detections(
        boxes, conf.softmax(-1), **settings)
    expected = detect(loc, conf, priors, variances=(0.1, 0.2), **settings)
    for image, dets in enumerate(expected):
        n = len(dets["scores"])
        assert int(counts[image]) == n and n > 0
        torch.testing.assert_close(det_scores[image, :n], dets["scores"])
        assert torch.equal(det_labels[image, :n], dets["labels"])
        torch.testing.assert_close(det_boxes[image, :n], dets["boxes"])


def test_torchscript_exporter_without_postprocess(tmp_path):
    needs_onnxruntime()
    needs_onnx()
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth", seed=1)
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances).eval()
    assert onnx_export.export(wrapper, 160, tmp_path / "ts.onnx", exporter="torchscript") == "torchscript"
    images = onnx_export.example_batch(onnx_export.synthetic_image(160), 160, cfg.data.mean)
    differences = onnx_export.onnxruntime_differences(wrapper, tmp_path / "ts.onnx", images)
    assert set(differences) == {"boxes", "scores"}
    assert max(differences.values()) < TOLERANCE


def test_auto_falls_back_to_torchscript(tmp_path, monkeypatch, caplog):
    needs_onnx()
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth", seed=2)

    def broken(*args):
        raise ModuleNotFoundError("No module named 'onnxscript'")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances).eval()
    with caplog.at_level("WARNING", logger="ssd.export"):
        assert onnx_export.export(wrapper, 160, tmp_path / "fb.onnx") == "torchscript"
    assert "No module named 'onnxscript'" in caplog.text
    assert (tmp_path / "fb.onnx").stat().st_size > 500_000  # the weights are in the file


def test_export_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth", seed=2)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import fails
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances).eval()
    with pytest.raises(runtimes.MissingPackageError,
                       match=r"missing package onnx for writing ONNX files: pip install "):
        onnx_export.export(wrapper, 160, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("package, extra_args", [("onnx", []), ("onnxscript", []),
                                                 ("onnxruntime", ["--exporter", "torchscript"])])
def test_missing_package_is_one_error_line_with_exit_status_2(tmp_path, monkeypatch, capsys,
                                                               package, extra_args):
    """The command, as run_cli runs it: one `error:` line naming the package, exit status 2."""
    save_checkpoint(tmp_path / "ssd7.pth")
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    argv = ["--weights", str(tmp_path / "ssd7.pth"), "--out", str(tmp_path / "x.onnx"), *extra_args]
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: export_cli.main(argv))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: missing package {package} for ")
    assert runtimes.install_command() in lines[0]
    assert not (tmp_path / "x.onnx").exists()


def test_install_command_for_a_clone_and_for_an_installed_package(tmp_path, monkeypatch):
    assert (REPO_ROOT / "setup.py").is_file()  # these tests run in a clone
    assert runtimes.install_command() == f'pip install -e ".[onnx]" (in {REPO_ROOT})'
    (tmp_path / "site-packages" / "ssd").mkdir(parents=True)  # no setup.py next to it
    monkeypatch.setattr(ssd, "__file__", str(tmp_path / "site-packages" / "ssd" / "__init__.py"))
    assert runtimes.install_command() == 'pip install "ssd[onnx]"'


def test_no_check_exports_without_onnxruntime_and_says_so(tmp_path, monkeypatch, capsys):
    needs_onnx()
    save_checkpoint(tmp_path / "ssd7.pth", seed=4)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    out = tmp_path / "unchecked.onnx"
    code = export_cli.main(["--weights", str(tmp_path / "ssd7.pth"), "--out", str(out),
                            "--exporter", "torchscript", "--no-check"])
    printed = capsys.readouterr().out
    assert code == 0 and out.stat().st_size > 500_000
    assert "(ONNX, torchscript exporter)" in printed
    assert "Not checked against PyTorch (--no-check)" in printed


def test_onnx_metadata_tells_the_preprocessing_and_classes(exported_with_nms):
    needs_onnx()
    _, out, _, cfg = exported_with_nms
    metadata = onnx_export.read_onnx_metadata(out)
    assert json.loads(metadata["class_names"]) == list(SHAPES_CLASSES)  # the config's data set
    assert metadata["input_size"] == "160" and metadata["input_layout"] == "NCHW"
    assert metadata["input_channel_order"] == "RGB" and metadata["input_dtype"] == "float32"
    assert json.loads(metadata["input_mean"]) == list(reversed(cfg.data.mean))  # data.mean is BGR
    assert metadata["input_scale"].startswith("1 ")
    assert "cv2.INTER_LINEAR" in metadata["resize"] and "cv2.INTER_AREA" in metadata["resize"]
    assert metadata["postprocess"] == "true" and "det_labels" in metadata["outputs"]
    assert float(metadata["score_threshold"]) == cfg.test.score_threshold
    assert float(metadata["nms_threshold"]) == cfg.test.nms_threshold
    assert int(metadata["top_k"]) == cfg.test.top_k
    assert metadata["ssd_version"] == ssd.__version__


def test_torchscript_format_matches_eager_and_carries_metadata(tmp_path, capsys):
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth", seed=5)
    out = tmp_path / "ssd7.pt"
    code = export_cli.main(["--weights", str(tmp_path / "ssd7.pth"), "--out", str(out),
                            "--format", "torchscript"])
    printed = capsys.readouterr().out
    assert code == 0 and "Checked with torch.jit.load" in printed and "OK: all within" in printed
    extra = {onnx_export.TORCHSCRIPT_METADATA_FILE: ""}
    traced = torch.jit.load(str(out), _extra_files=extra)
    images = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(8)) * 60
    boxes, scores = reference_outputs(model, cfg, images)  # batch 3: not the trace's 2
    with torch.no_grad(), torch.jit.optimized_execution(False):  # skip the slow profiling runs
        traced_boxes, traced_scores = traced(images)
    torch.testing.assert_close(traced_boxes, boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(traced_scores, scores, rtol=0, atol=1e-6)
    metadata = json.loads(extra[onnx_export.TORCHSCRIPT_METADATA_FILE])
    assert metadata["input_size"] == "160" and metadata["postprocess"] == "false"


def test_torchscript_format_refuses_postprocess(tmp_path):
    save_checkpoint(tmp_path / "ssd7.pth")
    with pytest.raises(ValueError, match="--with-postprocess is for --format onnx only"):
        export_cli.main(["--weights", str(tmp_path / "ssd7.pth"), "--out", str(tmp_path / "x.pt"),
                         "--format", "torchscript", "--with-postprocess"])
    assert not (tmp_path / "x.pt").exists()


def test_opencv_dnn_runs_the_plain_export_but_not_the_postprocess_one(tmp_path, exported_with_nms):
    """What the README says: cv2.dnn.readNetFromONNX takes the model without post-processing
    (same outputs as onnxruntime), and fails on the one with NMS."""
    cv2 = pytest.importorskip("cv2")
    ort = needs_onnxruntime()
    _, with_nms, model, cfg = exported_with_nms
    plain = tmp_path / "plain.onnx"
    onnx_export.export(onnx_export.ExportedSSD(model, cfg.model.variances).eval(), 160, plain,
                       exporter="torchscript")
    images = onnx_export.example_batch(onnx_export.synthetic_image(160), 160, cfg.data.mean)[:1]
    net = cv2.dnn.readNetFromONNX(str(plain))
    net.setInput(images.numpy(), "images")
    opencv_outputs = net.forward(["boxes", "scores"])
    session = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    for ours, theirs in zip(opencv_outputs, session.run(None, {"images": images.numpy()})):
        assert ours.shape == theirs.shape
        assert scaled_difference(torch.from_numpy(ours), torch.from_numpy(theirs)) < 1e-5
    with pytest.raises(cv2.error):
        net = cv2.dnn.readNetFromONNX(str(with_nms))
        net.setInput(images.numpy(), "images")
        net.forward(net.getUnconnectedOutLayersNames())


def test_no_detections_export_and_run(tmp_path):
    needs_onnxruntime()
    needs_onnx()
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth", overrides=["test.score_threshold=1.0"])
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances, onnx_export.postprocess_settings(cfg))
    onnx_export.export(wrapper.eval(), 160, tmp_path / "none.onnx", exporter="torchscript")
    images = onnx_export.example_batch(onnx_export.synthetic_image(160), 160, cfg.data.mean)
    differences = onnx_export.onnxruntime_differences(wrapper, tmp_path / "none.onnx", images)
    assert differences["num_detections"] == 0 and differences["detections"] == 0
    with torch.no_grad():
        assert wrapper(images)[5].tolist() == [0, 0]


def test_check_without_onnxruntime_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(runtimes.MissingPackageError, match="missing package onnxruntime for "
                                                              "checking the ONNX file"):
        onnx_export.verify_export(None, Path("unused.onnx"), "onnx", 160, (0, 0, 0))


def test_example_batch_is_the_evaluation_input_in_rgb_order():
    """A picture whose three channels differ: the network input is R, G, B minus the mean
    in that order (BaseTransform's order), not OpenCV's BGR."""
    blue, green, red = 10, 100, 200
    image = np.empty((40, 60, 3), np.uint8)
    image[...] = (blue, green, red)  # OpenCV order
    image[:, :30, 0] = 0  # the left half has no blue: the mirror must show it on the right
    mean = (104.0, 117.0, 123.0)  # BGR, as data.mean
    batch = onnx_export.example_batch(image, 32, mean)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    right = batch[0, :, :, -1]  # [3, 32]: the right column, untouched by the blue-free half
    torch.testing.assert_close(right, torch.tensor([[red - 123.0], [green - 117.0],
                                                    [blue - 104.0]]).expand(3, 32))
    assert float(batch[0, 2, 0, 0]) == -104.0  # left: no blue, third channel (B) is -mean_B
    torch.testing.assert_close(batch[1], batch[0].flip(-1))


def test_postprocess_needs_opset_11(tmp_path):
    model, cfg = save_checkpoint(tmp_path / "ssd7.pth")
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances, onnx_export.postprocess_settings(cfg))
    with pytest.raises(ValueError, match="needs --opset >= 11"):
        onnx_export.export(wrapper, 160, tmp_path / "x.onnx", opset=10)


def test_export_script_end_to_end(tmp_path):
    """The one subprocess run of the script: exit status and its report."""
    needs_onnxruntime()
    needs_onnx()
    save_checkpoint(tmp_path / "ssd7.pth", seed=3)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "export_onnx.py"),
                             "--weights", str(tmp_path / "ssd7.pth"), "--out",
                             str(tmp_path / "ssd7.onnx"), "--exporter", "torchscript"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2116 priors, 7 classes" in result.stdout and "OK: all within 0.0001" in result.stdout
    assert "(ONNX, torchscript exporter)" in result.stdout
    assert "Checked with onnxruntime" in result.stdout


def test_export_script_bad_image_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "ssd7.pth")
    with pytest.raises(FileNotFoundError, match="Image file not found: .*missing.png"):
        load_script("export_onnx").main(["--weights", str(tmp_path / "ssd7.pth"), "--out",
                                         str(tmp_path / "x.onnx"), "--image",
                                         str(tmp_path / "missing.png")])
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_ssd300_export_matches_pytorch(tmp_path, capsys):
    needs_onnxruntime()
    needs_onnx()
    cfg = load_config(REPO_ROOT / "configs" / "voc300.yaml")
    torch.manual_seed(0)
    torch.save(build_model(cfg).state_dict(), tmp_path / "ssd300.pth")  # classic layout
    out = tmp_path / "ssd300.onnx"
    code = load_script("export_onnx").main(["--weights", str(tmp_path / "ssd300.pth"),
                                            "--out", str(out), "--with-postprocess"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "8732 priors, 21 classes" in printed and "OK: all within 0.0001" in printed
