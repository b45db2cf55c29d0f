# attnlab recipes. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

experiment := "experiments/baby_shakespeare.toml"

# Install what the wgpu path and the tests need (Debian/Ubuntu; uses sudo when not root).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    if ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
        $SUDO apt-get update && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y mesa-vulkan-drivers libvulkan1
    fi

# Download Tiny Shakespeare into datasets/ and check its sha256.
data:
    #!/usr/bin/env bash
    set -euo pipefail
    f=datasets/tinyshakespeare/input.txt
    want=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
    mkdir -p "$(dirname "$f")"
    if [ ! -f "$f" ]; then
        curl -fL --retry 3 -o "$f.part" https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
        mv "$f.part" "$f"
    fi
    got=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then echo "checksum mismatch for $f: $got (want $want)"; rm -f "$f"; exit 1; fi
    echo "$f OK"

# Train one run (extra args go to `attnlab train`, e.g. --set model.attention.kind=mqa).
train *ARGS:
    cargo run --release -p attnlab-cli -- train {{experiment}} {{ARGS}}

# The test suite (CPU, plus the wgpu smoke tests where a Vulkan adapter exists).
test:
    cargo test --release --workspace

# The benchmark set: device peak, training throughput/MFU/memory, decode, scaling (CPU).
bench:
    cargo run --release -p attnlab-cli -- bench peak
    cargo run --release -p attnlab-cli -- bench train experiments/mha_gqa_mla.toml --json runs/bench-train.json
    cargo run --release -p attnlab-cli -- bench decode experiments/mha_gqa_mla.toml --json runs/bench-decode.json
    cargo run --release -p attnlab-cli -- bench scaling experiments/softmax_family.toml --json runs/bench-scaling.json

# attnlab vs the PyTorch eager reference (bench/pytorch_reference.py) on the baby config, back to back (installs torch into .venv-bench/ once).
bench-compare STEPS="50":
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c "import torch" 2>/dev/null; then
        python3 -m venv .venv-bench && .venv-bench/bin/pip install --quiet torch
    fi
    data=""
    for f in datasets/tinyshakespeare/input.txt ../shared/datasets/tinyshakespeare/input.txt; do
        if [ -f "$f" ]; then data="--data $f"; break; fi
    done
    mkdir -p runs
    cargo run --release -p attnlab-cli -- bench train experiments/baby_shakespeare.toml --steps {{STEPS}} --json runs/bench-compare-attnlab.json
    .venv-bench/bin/python bench/pytorch_reference.py --steps {{STEPS}} $data --json | tee runs/bench-compare-pytorch.json
    .venv-bench/bin/python - <<'PY'
    import json
    ours = json.load(open("runs/bench-compare-attnlab.json"))[0]
    ref = json.loads(open("runs/bench-compare-pytorch.json").read())
    ratio, median_ratio = ours["tokens_per_sec"] / ref["tokens_per_sec"], ref["ms_per_step_median"] / ours["ms_per_step_median"]
    print(f"attnlab {ours['tokens_per_sec']:.0f} tokens/s ({ours['ms_per_step_median']:.1f} ms/step median), "
          f"PyTorch eager {ref['tokens_per_sec']:.0f} tokens/s ({ref['ms_per_step_median']:.1f} ms/step median): "
          f"ratio {ratio:.2f}x (by median step {median_ratio:.2f}x)")
    PY

# Sample from a trained run: just generate runs/baby_shakespeare/<run-id>
generate RUN *ARGS:
    cargo run --release -p attnlab-cli -- generate {{RUN}} {{ARGS}}

# Run a sweep (all points and seeds; resumes and skips finished runs), e.g. just sweep experiments/mha_gqa_mla.toml
sweep FILE *ARGS:
    cargo run --release -p attnlab-cli -- sweep {{FILE}} {{ARGS}}

# Tables and plots for a run store: just report mha_gqa_mla  → reports/mha_gqa_mla/
report NAME="mha_gqa_mla":
    cargo run --release -p attnlab-cli -- report runs/{{NAME}} --out reports/{{NAME}}
