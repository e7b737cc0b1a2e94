"""Multi-node training: two torchrun "nodes" on this machine, 2 processes each, gloo over
localhost with the c10d rendezvous, end with identical weights on all 4 ranks."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ssd.data import ensure_shapes
from ssd.engine import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = str(REPO_ROOT / "scripts" / "train.py")
NODES, PROCESSES_PER_NODE = 2, 2
SHAPES = {"num_train": 16, "num_test": 4, "image_size": 96, "seed": 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_command(port: int, data_root: Path, output: Path) -> list[str]:
    overrides = {
        "data.root": str(data_root), "data.num_workers": 0,
        **{f"data.shapes.{key}": value for key, value in SHAPES.items()},
        "solver.batch_size": 8, "solver.max_iter": 3, "solver.warmup_iters": 1,
        "train.log_period": 1, "train.checkpoint_period": 3, "train.eval_period": 0,
    }
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}",
            f"--nproc_per_node={PROCESSES_PER_NODE}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=multinode-test", TRAIN_SCRIPT,
            "--config", str(REPO_ROOT / "configs" / "shapes.yaml"), "--device", "cpu",
            "--output", str(output), "--no-progress", "--opts",
            *[f"{key}={json.dumps(value)}" for key, value in overrides.items()]]


def test_two_nodes_of_two_processes_end_with_identical_weights(tmp_path):
    data_root = tmp_path / "data"
    ensure_shapes(data_root, **SHAPES)  # once, before the ranks start
    output = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = _node_command(_free_port(), data_root, output)
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(NODES)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    world = NODES * PROCESSES_PER_NODE
    printed = "".join(stdout + stderr for stdout, stderr in outputs)
    assert f"DDP: weights identical across {world} ranks" in printed
    assert [iteration for iteration, _ in ckpt.list_checkpoints(output)] == [3]


def test_a_batch_that_does_not_split_over_the_ranks_is_one_message_before_they_connect(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", TRAIN_SCRIPT, "--config",
               str(REPO_ROOT / "configs" / "shapes.yaml"), "--device", "cpu", "--output",
               str(tmp_path / "run"), "--opts", f"data.root={tmp_path / 'data'}", "solver.batch_size=7"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    printed = done.stdout + done.stderr
    assert done.returncode != 0
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert errors == ["error: solver.batch_size=7 is the global batch and must be divisible by the "
                      "number of processes (2)"], printed
    assert "exitcode  : 2" in printed  # the status of a user error, from torchrun's summary
    assert "gloo" not in printed.lower() and 'train.py", line' not in printed  # no rank traceback
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
