#!/usr/bin/env bash
# Checks and timings of the CUDA paths on a machine with an NVIDIA GPU, in one command:
#
#     bash scripts/cuda_report.sh [OUTPUT_DIR]        # default runs/cuda_report
#
# 1. scripts/benchmark.py postprocess + loss at batch 32 (post-processing against the fp16
#    forward pass; the loss against the classic per-image algorithm);
# 2. the whole training loop of configs/shapes300.yaml (SSD300, fp16, channels_last, its loader
#    workers) against its bare step, batch 32;
# 3. the tests that run on CUDA (they are skipped on machines without a GPU);
# 4. torch.compile against eager for SSD300's train step and forward, batch 32;
# 5. the training loader's images/s with 0, 4, 8 and 15 workers (full SSD augmentation, 300 px).
#
# Each step has its own time limit, so one that fails or hangs does not hide the others. Every
# step's output goes to OUTPUT_DIR/<step>.log, its figures to OUTPUT_DIR/figures.json; the end
# of each log is echoed, and a last line gives each step's exit status.
set -u
out=${1:-runs/cuda_report}
mkdir -p "$out/json"
export PYTHONUNBUFFERED=1
statuses=()

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, log to OUTPUT_DIR
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "   exit status $status after $((SECONDS - start)) s"
    grep -v '%|' "$out/$name.log" | tail -n 30
    statuses+=("$name=$status")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(), '|', torch.get_num_threads(), 'threads')"
nproc

benchmark="python3 scripts/benchmark.py"
step postprocess_loss 100 $benchmark postprocess loss --device cuda --batch-size 32 \
    --json "$out/json/postprocess_loss.json"
step loop 120 $benchmark loop --config configs/shapes300.yaml --device cuda --batch-size 32 \
    --json "$out/json/loop.json"
step tests 150 python3 -m pytest -q -rs -k cuda tests/test_postprocess.py tests/test_predictor.py \
    tests/test_eval_script.py tests/test_trainer.py
step compile 150 $benchmark compile --config configs/shapes300.yaml --device cuda --batch-size 32 \
    --json "$out/json/compile.json"
step data 110 $benchmark data --config configs/shapes300.yaml --workers 0 4 8 15 \
    --json "$out/json/data.json"

python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
figures = {path.stem: json.loads(path.read_text()) for path in sorted((out / "json").glob("*.json"))}
(out / "figures.json").write_text(json.dumps(figures, indent=2))
EOF
rm -rf "$out/json"
echo "steps: ${statuses[*]}"
