#!/usr/bin/env bash
# The evaluations of reports/long_context/ on every finished run of experiments/long_context.toml
# (each appended to the run's evals.jsonl; `attnlab report runs/long_context` tabulates them):
# - dense, for reference;
# - Star Attention on the last 128 tokens of each 1,024-token window (context 896 tokens) with
#   blocks of 448, 224, 112 (T_c/2, /4, /8) and, to find where it breaks, 28 and 7, anchor = block
#   and no anchor, 2 hosts; and on the last 16 tokens (context 1,008) with blocks of 252, 63, 7;
# - Adamas, sink + window (4 sinks), pages (of 8 keys) and the oracle at budgets 16, 32, 64, 128:
#   512 tokens prefilled densely, 512 decoded one at a time, layers 0-1 dense, 2 batches of 4 windows.
# Usage: bench/long_context_evals.sh [ATTNLAB_BINARY] [RUN_STORE]
set -euo pipefail
bin=${1:-attnlab}
store=${2:-runs/long_context}
for run in "$store"/*/; do
    run=${run%/}
    [ -f "$run/summary.json" ] || continue
    "$bin" eval "$run"
    for block in 448 224 112 28 7; do
        for anchor in "$block" 0; do
            "$bin" eval "$run" --set eval.inference.kind=star --set eval.inference.block=$block \
                --set eval.inference.anchor=$anchor --set eval.inference.query=128
        done
    done
    # A 16-token query (context 1,008): the scored tokens' nearby context is star-encoded too;
    # 20 batches (80 windows, 1,280 scored tokens).
    for block in 252 63 7; do
        for anchor in "$block" 0; do
            "$bin" eval "$run" --batches 20 --set eval.inference.kind=star --set eval.inference.block=$block \
                --set eval.inference.anchor=$anchor --set eval.inference.query=16
        done
    done
    for budget in 16 32 64 128; do
        for kind in adamas sink_window pages oracle; do
            extra=()
            [ "$kind" = pages ] && extra=(--set eval.inference.page=8)
            "$bin" eval "$run" --batches 2 --set eval.inference.kind=$kind --set eval.inference.budget=$budget \
                --set eval.inference.prefill=512 "${extra[@]}"
        done
    done
done
