# attnlab recipes. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

experiment := "experiments/baby_shakespeare.toml"

# Install what the wgpu path and the tests need (Debian/Ubuntu; uses sudo when not root).
setup:
    bash scripts/setup.sh

# Download Tiny Shakespeare into datasets/ and check its sha256.
data:
    bash scripts/data.sh

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
    cargo run --release -p attnlab-cli -- bench train experiments/linear_family.toml --json runs/bench-train-recurrent.json
    cargo run --release -p attnlab-cli -- bench decode experiments/linear_family.toml --contexts 256,1024,4096,16384 --batches 1 --json runs/bench-decode-recurrent.json --plots runs/bench-decode-recurrent

# attnlab vs the PyTorch eager reference (bench/pytorch_reference.py), back to back: DEVICE cpu|gpu (wgpu vs cuda), PRESET baby|gpu, DTYPE f32|tf32|bf16|f16 (PyTorch's).
bench-compare STEPS="50" DEVICE="cpu" PRESET="baby" DTYPE="f32":
    bash bench/compare.sh {{STEPS}} {{DEVICE}} {{PRESET}} {{DTYPE}}

# Sample from a trained run: just generate runs/baby_shakespeare/<run-id>
generate RUN *ARGS:
    cargo run --release -p attnlab-cli -- generate {{RUN}} {{ARGS}}

# Run a sweep (all points and seeds; resumes and skips finished runs), e.g. just sweep experiments/mha_gqa_mla.toml
sweep FILE *ARGS:
    cargo run --release -p attnlab-cli -- sweep {{FILE}} {{ARGS}}

# Tables and plots for a run store: just report mha_gqa_mla  → reports/mha_gqa_mla/
report NAME="mha_gqa_mla":
    cargo run --release -p attnlab-cli -- report runs/{{NAME}} --out reports/{{NAME}}
