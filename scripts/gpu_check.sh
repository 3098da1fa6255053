#!/usr/bin/env bash
# The GPU check: run examples/digits through a worker with --gpus auto on a machine with an
# NVIDIA GPU, and show the device each trial ran on and the CUDA_VISIBLE_DEVICES it was
# pinned to. A second, one-trial run with --gpus none shows that a CPU slot hides the GPUs.
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# Needs rung importable (pip install -e '.[examples]', or PYTHONPATH) and torch with CUDA.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}

nvidia-smi -L | tee "$out/nvidia-smi.txt"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count())'

devices() {  # the device line each trial process logged, counted
    grep -oh 'device: [^"\\]*' "$1"/experiments/*/events.jsonl | sort | uniq -c
}

echo "== digits, adaptive ASHA, one worker, --gpus auto"
state=$(mktemp -d)
start=$(date +%s)
(cd "$state" && "$py" -m rung run "$root/examples/digits/digits.yaml" "$root/examples/digits" \
    --workers 1 --gpus auto --state-dir "$state" --json) >"$out/digits-auto.json" 2>"$out/digits-auto.log"
echo "exit $? after $(($(date +%s) - start)) s"
"$py" -c 'import json,sys; s=json.load(open(sys.argv[1])); print({k: s[k] for k in ("state", "best_trial") if k in s})' "$out/digits-auto.json"
devices "$state" | tee "$out/devices-auto.txt"
echo "trial exits by reason:"
grep -oh '"type":"trial_exited","reason":"[A-Z_]*"' "$state"/experiments/*/events.jsonl |
    sed 's/.*"reason":"//; s/"//' | sort | uniq -c | tee "$out/exits-auto.txt"
cp "$state"/experiments/*/events.jsonl "$out/digits-auto.events.jsonl"

echo "== one trial, --gpus none: the trial must not see the GPU"
state=$(mktemp -d)
sed -e 's/name: adaptive_asha/name: single/' -e 's/epochs: 27/epochs: 2/' \
    -e '/max_trials\|divisor\|max_concurrent_trials/d' \
    "$root/examples/digits/digits.yaml" >"$state/one.yaml"
(cd "$state" && "$py" -m rung run one.yaml "$root/examples/digits" --workers 1 --gpus none \
    --state-dir "$state" --json) >"$out/digits-none.json" 2>"$out/digits-none.log"
echo "exit $?"
devices "$state" | tee "$out/devices-none.txt"

if grep -q ERRORED "$out/exits-auto.txt"; then
    echo "FAILED: some trial processes errored; their stderr tails are in $out/digits-auto.events.jsonl"
    exit 1
fi
