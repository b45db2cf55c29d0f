#!/usr/bin/env bash
# The GPU measurements of the README's "GPUs" section, in one go, on a machine with an NVIDIA GPU,
# its Vulkan driver and PyTorch (CUDA), and no Rust: release binaries built elsewhere.
#   bench/gpu.sh OUT_DIR BIN [BIN...]        (BIN a path: ./attnlab, not attnlab)
# Each BIN is an attnlab release binary (e.g. the default build and one with `--features spirv`);
# a binary's first run of a config autotunes its kernels (a minute or more per config on an H200;
# allow for it in any timeout);
# every one runs the same list, then PyTorch eager runs the same configs (PYTHON, default
# python3). Everything printed goes to OUT_DIR/gpu.log; `bench train` JSON files beside it.
# STEPS (default 50) timed steps per point; TRAIN_STEPS (default 2000) steps of the baby config
# trained to its val loss on the GPU with the first binary (0 skips it).
set -uo pipefail
out="$1"
shift
bins=("$@")
python="${PYTHON:-python3}"
steps="${STEPS:-50}"
train_steps="${TRAIN_STEPS:-2000}"
mkdir -p "$out"
log="$out/gpu.log"
say() { echo "== $* ==" | tee -a "$log"; }
run() { # a command, its output to the log, its wall time, never stopping the script
    echo "\$ $*" | tee -a "$log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$log"
    echo "(exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s)" | tee -a "$log"
}
data=()
[ -f datasets/tinyshakespeare/input.txt ] && data=(--data datasets/tinyshakespeare/input.txt)

say "machine"
run nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    say "$name: matmul peak (f32, f16)"
    run "$bin" bench peak --device wgpu
    run "$bin" bench peak --device wgpu --dtype f16
    say "$name: baby config (4L/4H/128, block 64, batch 12), f32"
    run "$bin" bench train experiments/baby_shakespeare.toml --device wgpu --steps "$steps" --json "$out/$name-baby.json"
    say "$name: nanoGPT GPU config (6L/6H/384, block 256, batch 64), f32: MHA, GQA-2, MLA-128"
    run "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps" --json "$out/$name-gpu.json"
    run "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps" --set model.attention.kind=gqa --set model.attention.kv_heads=2
    run "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps" --set model.attention.kind=mla --set model.attention.kv_latent=128
    say "$name: nanoGPT GPU config, train.precision = f16 (f32 master weights)"
    run "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps" --set train.precision=f16
    say "$name: nanoGPT GPU config with Burn's composed attention instead of the fused kernel (ATTNLAB_FUSED=0), f32 and f16"
    run env ATTNLAB_FUSED=0 "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps"
    run env ATTNLAB_FUSED=0 "$bin" bench train experiments/shakespeare_gpu.toml --device wgpu --steps "$steps" --set train.precision=f16
    say "$name: one attention layer vs T, fused kernel then composed ops (time; memory = the allocator's growth)"
    run "$bin" bench scaling experiments/gpu_attention.toml --device wgpu --lengths 1024,2048,4096,8192 --modes infer,train
    run env ATTNLAB_FUSED=0 "$bin" bench scaling experiments/gpu_attention.toml --device wgpu --lengths 1024,2048,4096,8192 --modes infer,train
done
say "PyTorch eager, same configs"
for dtype in f32 tf32; do
    run "$python" bench/pytorch_reference.py --preset baby --device cuda --dtype "$dtype" --steps "$steps" "${data[@]}"
done
for dtype in f32 tf32 bf16 f16; do
    run "$python" bench/pytorch_reference.py --preset gpu --device cuda --dtype "$dtype" --steps "$steps" "${data[@]}"
done
if [ "$train_steps" -gt 0 ]; then
    say "$(basename "${bins[0]}"): baby config trained $train_steps steps on the GPU (val loss against the CPU's)"
    run "${bins[0]}" train experiments/baby_shakespeare.toml --device wgpu --out /tmp/gpu-runs --set "train.steps=$train_steps"
    cp /tmp/gpu-runs/baby_shakespeare/*/summary.json "$out/baby-train-summary.json" 2>/dev/null
fi
