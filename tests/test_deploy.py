"""ssd/deploy.py, ssd/deploy_benchmark.py, ssd-export --format openvino / --int8 and
ssd-benchmark: the fast CPU formats run like PyTorch, carry their metadata, and are compared in
one table. Tests needing onnx, onnxruntime or openvino skip cleanly without them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from trainer_helpers import REPO_ROOT, tiny_overrides

from ssd import deploy, runtimes
from ssd import export as onnx_export
from ssd.box_utils import decode
from ssd.cli import benchmark as benchmark_cli
from ssd.cli import export as export_cli
from ssd.cli.common import run_cli
from ssd.config import load_config
from ssd.data import make_shapes
from ssd.deploy_benchmark import RUNTIMES, Runtime, RuntimeNetwork, runtime_map
from ssd.modeling import build_model

# fp32 against fp32: only summation order differs (see tests/test_export_onnx.py)
FP32_TOLERANCE = 1e-4
SMALL_SSD7 = {"model.image_size": 96, "model.channels": None,
              "model.priors.feature_maps": [12, 6, 3, 1], "model.priors.steps": [8, 16, 32, 96],
              "model.priors.min_sizes": [10, 24, 40, 60], "model.priors.max_sizes": [24, 40, 60, 90]}


# OpenVINO (2026.4) corrupts the C heap of its process once it has converted and compiled a few
# models: glibc's malloc checker (LD_PRELOAD=libc_malloc_debug.so.0, glibc.malloc.check=3)
# aborts a script that only converts, compiles and runs a two-layer ONNX model three times with
# OpenVINO alone, and in one pytest process a later, unrelated allocation crashed. The tests
# that convert models with OpenVINO therefore run each in a pytest process of its own, started
# by `test_openvino_tests_pass_in_their_own_process`, so the rest of the suite keeps a sound heap.
OWN_PROCESS_VARIABLE = "SSD_TEST_OPENVINO_PROCESS"
OPENVINO_CONVERSION_TESTS = ("test_openvino_export_matches_pytorch_and_carries_metadata",
                             "test_benchmark_prints_every_available_runtime_and_writes_json")


def needs(*packages):
    for package in packages:
        pytest.importorskip(package, reason=f"{package} is not installed (pip install -e .[openvino])")


def needs_own_process(*packages):
    """Skip unless this is the OpenVINO tests' own pytest process (see OWN_PROCESS_VARIABLE)."""
    if os.environ.get(OWN_PROCESS_VARIABLE) != "1":
        pytest.skip("runs in its own process (test_openvino_tests_pass_in_their_own_process)")
    needs(*packages)


def test_openvino_tests_pass_in_their_own_process():
    needs("onnx", "onnxruntime", "openvino")
    if os.environ.get(OWN_PROCESS_VARIABLE) == "1":
        pytest.skip("already in the OpenVINO tests' own process")
    for name in OPENVINO_CONVERSION_TESTS:  # one process each: the fewer conversions the better
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"{__file__}::{name}"], env={**os.environ, OWN_PROCESS_VARIABLE: "1"},
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "1 passed" in done.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised SSD7 at 96 px (760 priors) on a 16-image shapes set."""
    folder = tmp_path_factory.mktemp("deploy")
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml",
                      overrides=tiny_overrides(folder / "data", **SMALL_SSD7))
    shapes = cfg.data.shapes
    make_shapes(cfg.data.root, shapes.num_train, shapes.num_test, shapes.image_size, shapes.seed)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, folder / "ssd7.pth")
    return folder, model, cfg


def export_main(checkpoint, out, *extra):
    folder, _, _ = checkpoint
    return export_cli.main(["--weights", str(folder / "ssd7.pth"), "--output", str(out),
                            "--exporter", "torchscript", *extra])


def test_openvino_export_matches_pytorch_and_carries_metadata(checkpoint, capsys):
    needs_own_process("onnx", "openvino")
    folder, model, cfg = checkpoint
    out = folder / "ssd7.xml"
    assert export_main(checkpoint, out, "--format", "openvino", "--with-postprocess") == 0
    printed = capsys.readouterr().out
    assert "Checked with OpenVINO (f32)" in printed and f"OK: all within {FP32_TOLERANCE:g}" in printed
    assert out.with_suffix(".bin").stat().st_size > 0.9 * 4 * sum(p.numel() for p in model.parameters())
    metadata = deploy.read_openvino_metadata(out)
    expected = onnx_export.deployment_metadata(cfg, onnx_export.postprocess_settings(cfg))
    assert metadata == expected  # class names, input size, mean, channel order, NMS settings
    assert json.loads(metadata["class_names"])[0] == "circle"


def test_openvino_output_must_be_xml(checkpoint):
    needs("onnx", "openvino")
    folder, _, _ = checkpoint
    with pytest.raises(ValueError, match=r"--output .*ssd7.onnx: an OpenVINO model is written as NAME.xml"):
        export_main(checkpoint, folder / "ssd7.onnx", "--format", "openvino")


def test_int8_onnx_is_quantized_close_to_pytorch_and_keeps_metadata(checkpoint, capsys):
    """INT8 outputs differ from float32 by the quantization itself, so no 1e-4 bound: the
    scores must stay within a small fraction of how much they vary between two images (a file
    that ignored its input, or with wrong ranges, would be off by that whole variation)."""
    needs("onnx", "onnxruntime")
    import onnx

    folder, model, cfg = checkpoint
    out = folder / "ssd7_int8.onnx"
    assert export_main(checkpoint, out, "--int8", "--calib", "8", "--no-check") == 0
    assert "INT8 (QDQ, 8 calibration images)" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) >= len(
        [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)])
    assert onnx_export.read_onnx_metadata(out)["input_size"] == "96"
    images = torch.stack([image for image in deploy.calibration_images(cfg, 2)])  # [2, 3, 96, 96]
    boxes, scores = runtimes.onnxruntime_runner(out)(images.numpy())
    with torch.no_grad():
        _, reference = onnx_export.ExportedSSD(model, cfg.model.variances)(images)
    error = (torch.from_numpy(scores) - reference).abs().mean()
    variation = (reference[0] - reference[1]).abs().mean()
    assert variation > 0 and error < 0.25 * variation, (error, variation)


def test_calibration_images_are_spread_over_the_training_set(checkpoint):
    _, _, cfg = checkpoint
    images = deploy.calibration_images(cfg, 5)
    assert images.shape == (5, 3, 96, 96) and images.dtype == torch.float32
    assert len({float(image.sum()) for image in images}) == 5  # five different images
    assert deploy.calibration_images(cfg, 1000).shape[0] == 16  # the whole set at most
    with pytest.raises(ValueError, match="--calib 0: expected at least 1"):
        deploy.calibration_images(cfg, 0)


def test_runtime_network_gives_the_pytorch_map(checkpoint):
    """The benchmark's mAP path (runtime outputs -> encode / log -> ssd-eval's post-processing)
    scores PyTorch exactly as evaluate_model scores the model itself."""
    from ssd.cli.benchmark import _evaluation_data
    from ssd.engine.inference import evaluate_model
    from ssd.postprocess import build_postprocessor

    _, model, cfg = checkpoint
    cfg = load_config(REPO_ROOT / "configs" / "shapes.yaml",
                      overrides=[*tiny_overrides(cfg.data.root, **SMALL_SSD7), "test.score_threshold=0.2"])
    dataset, loader = _evaluation_data(cfg)
    wrapper = onnx_export.ExportedSSD(model, cfg.model.variances).eval()
    runtime = Runtime("pytorch-fp32", run=lambda images: wrapper(images))
    direct = evaluate_model(model, dataset, loader, "cpu", build_postprocessor(cfg), cfg.test.metric,
                            progress=False)
    assert runtime_map(runtime, model, cfg, dataset, loader) == pytest.approx(direct["mAP"], abs=1e-6)
    network = RuntimeNetwork(runtime.run, model.priors, cfg.model.variances)
    images = torch.randn(2, 3, 96, 96) * 60
    with torch.no_grad():
        loc, conf = model(images)
        torch.testing.assert_close(network(images)[1].softmax(-1), conf.softmax(-1))
        boxes = decode(network(images)[0], model.priors, cfg.model.variances)
        torch.testing.assert_close(boxes, decode(loc, model.priors, cfg.model.variances))


def test_benchmark_prints_every_available_runtime_and_writes_json(checkpoint, capsys):
    needs_own_process("onnx", "onnxruntime", "openvino")
    folder, _, _ = checkpoint
    formats = [name for name in RUNTIMES if name != "torch-compile"]  # compiling takes ~20 s
    code = benchmark_cli.main(["--weights", str(folder / "ssd7.pth"), "--formats", *formats,
                               "--batch-sizes", "2", "--rounds", "1", "--warmup", "0",
                               "--calib", "4", "--output", str(folder / "bench.json")])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads((folder / "bench.json").read_text())
    rows = {row["name"]: row for row in results["runtimes"]}
    assert list(rows) == formats
    for name, row in rows.items():
        if row["skipped"]:  # only the fast path, on a CPU without native bf16
            assert name == "pytorch-fast" and "no native bfloat16" in row["skipped"]
            continue
        assert f"| {name} |" in printed
        assert row["file_bytes"] > 0 and set(row["timings"]) == {"2"}
        assert 0 <= row["mAP"] <= 1
        timing = row["timings"]["2"]
        assert timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert rows["pytorch-fp32"]["mAP"] == pytest.approx(rows["onnxruntime-fp32"]["mAP"], abs=1e-3)
    assert rows["onnxruntime-int8"]["file_bytes"] < 0.5 * rows["onnxruntime-fp32"]["file_bytes"]


def test_benchmark_lists_a_runtime_without_its_package_as_skipped(checkpoint, capsys, monkeypatch):
    folder, _, _ = checkpoint
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    code = benchmark_cli.main(["--weights", str(folder / "ssd7.pth"), "--formats", "pytorch-fp32",
                               "openvino", "--batch-sizes", "1", "--rounds", "1", "--no-map",
                               "--output", str(folder / "skip.json")])
    printed = capsys.readouterr().out
    assert code == 0 and "| pytorch-fp32 |" in printed
    assert "skipped openvino: missing package openvino for writing and running OpenVINO models: " \
           "pip install" in printed and ".[openvino]" in printed


@pytest.mark.parametrize("package, extra_args, extra", [
    ("openvino", ["--format", "openvino"], "openvino"),
    ("onnxruntime", ["--int8", "--no-check"], "onnx")])
def test_missing_package_is_one_error_line(checkpoint, tmp_path, monkeypatch, capsys, package,
                                           extra_args, extra):
    folder, _, _ = checkpoint
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    out = tmp_path / ("x.xml" if package == "openvino" else "x.onnx")
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: export_main(checkpoint, out, *extra_args))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: missing package {package} for ")
    assert runtimes.install_command(extra) in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_benchmark_rejects_bad_counts(checkpoint):
    folder, _, _ = checkpoint
    with pytest.raises(ValueError, match=r"--batch-sizes \[0\]: expected sizes of at least 1"):
        benchmark_cli.main(["--weights", str(folder / "ssd7.pth"), "--batch-sizes", "0"])


def test_file_size_counts_the_openvino_weights(tmp_path):
    (tmp_path / "m.xml").write_bytes(b"x" * 10)
    (tmp_path / "m.bin").write_bytes(b"x" * 90)
    assert deploy.file_size(tmp_path / "m.xml") == 100
    assert deploy.file_size(tmp_path / "m.bin") == 90
    assert np.isclose(deploy.file_size(tmp_path / "m.xml") / 100, 1.0)
