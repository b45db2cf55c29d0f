#!/usr/bin/env bash
# attnlab vs the PyTorch eager reference (bench/pytorch_reference.py), same config, back to back:
#   bench/compare.sh [STEPS] [DEVICE] [PRESET] [DTYPE]      (`just bench-compare ...`)
#   DEVICE: cpu (attnlab cpu vs PyTorch cpu) or gpu (attnlab wgpu vs PyTorch cuda)
#   PRESET: baby (experiments/baby_shakespeare.toml) or gpu (experiments/shakespeare_gpu.toml)
#   DTYPE:  PyTorch's precision: f32, tf32, bf16 or f16; attnlab trains in f16 (train.precision)
#           when DTYPE is f16, else in f32 (wgpu has no TF32 and computes in f16, not bf16)
# ATTNLAB_BIN=path runs that binary instead of `cargo run --release` (a GPU machine without
# Rust); PYTHON=python3 uses that interpreter (with torch) instead of installing torch into
# .venv-bench/ (done once, on the CPU path).
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-50}" device="${2:-cpu}" preset="${3:-baby}" dtype="${4:-f32}"
case "$device" in
    cpu) ours=cpu; theirs=cpu ;;
    gpu) ours=wgpu; theirs=cuda ;;
    *) echo "bench/compare.sh: DEVICE = $device: allowed: cpu, gpu" >&2; exit 2 ;;
esac
case "$preset" in
    baby) toml=experiments/baby_shakespeare.toml ;;
    gpu) toml=experiments/shakespeare_gpu.toml ;;
    *) echo "bench/compare.sh: PRESET = $preset: allowed: baby, gpu" >&2; exit 2 ;;
esac
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c "import torch" 2>/dev/null; then
        python3 -m venv .venv-bench && .venv-bench/bin/pip install --quiet torch
    fi
    python=.venv-bench/bin/python
fi
data=()
for f in datasets/tinyshakespeare/input.txt ../shared/datasets/tinyshakespeare/input.txt; do
    if [ -f "$f" ]; then data=(--data "$f"); break; fi
done
if [ -n "${ATTNLAB_BIN:-}" ]; then attnlab=("$ATTNLAB_BIN"); else attnlab=(cargo run --release -p attnlab-cli --); fi
mkdir -p runs
precision=f32
if [ "$dtype" = f16 ]; then precision=f16; fi
"${attnlab[@]}" bench train "$toml" --device "$ours" --steps "$steps" --set "train.precision=$precision" --json runs/bench-compare-attnlab.json
"$python" bench/pytorch_reference.py --preset "$preset" --device "$theirs" --dtype "$dtype" --steps "$steps" "${data[@]}" --json | tee runs/bench-compare-pytorch.json
"$python" - <<'PY'
import json
ours = json.load(open("runs/bench-compare-attnlab.json"))[0]
ref = json.loads(open("runs/bench-compare-pytorch.json").read())
ratio, median_ratio = ours["tokens_per_sec"] / ref["tokens_per_sec"], ref["ms_per_step_median"] / ours["ms_per_step_median"]
print(f"attnlab {ours['tokens_per_sec']:.0f} tokens/s ({ours['ms_per_step_median']:.1f} ms/step median), "
      f"PyTorch eager {ref['dtype']} {ref['tokens_per_sec']:.0f} tokens/s ({ref['ms_per_step_median']:.1f} ms/step median): "
      f"ratio {ratio:.2f}x (by median step {median_ratio:.2f}x)")
PY
