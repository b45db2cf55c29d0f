#!/usr/bin/env bash
# attnlab vs the PyTorch eager reference (bench/pytorch_reference.py) on the baby config, back
# to back (`just bench-compare [STEPS]`); installs torch into .venv-bench/ once.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-50}"
if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c "import torch" 2>/dev/null; then
    python3 -m venv .venv-bench && .venv-bench/bin/pip install --quiet torch
fi
data=()
for f in datasets/tinyshakespeare/input.txt ../shared/datasets/tinyshakespeare/input.txt; do
    if [ -f "$f" ]; then data=(--data "$f"); break; fi
done
mkdir -p runs
cargo run --release -p attnlab-cli -- bench train experiments/baby_shakespeare.toml --steps "$steps" --json runs/bench-compare-attnlab.json
.venv-bench/bin/python bench/pytorch_reference.py --steps "$steps" "${data[@]}" --json | tee runs/bench-compare-pytorch.json
.venv-bench/bin/python - <<'PY'
import json
ours = json.load(open("runs/bench-compare-attnlab.json"))[0]
ref = json.loads(open("runs/bench-compare-pytorch.json").read())
ratio, median_ratio = ours["tokens_per_sec"] / ref["tokens_per_sec"], ref["ms_per_step_median"] / ours["ms_per_step_median"]
print(f"attnlab {ours['tokens_per_sec']:.0f} tokens/s ({ours['ms_per_step_median']:.1f} ms/step median), "
      f"PyTorch eager {ref['tokens_per_sec']:.0f} tokens/s ({ref['ms_per_step_median']:.1f} ms/step median): "
      f"ratio {ratio:.2f}x (by median step {median_ratio:.2f}x)")
PY
