#!/usr/bin/env bash
# The eval-time loop sweep of reports/looped/: every looped run of experiments/looped.toml and
# experiments/looped_mqar.toml evaluated with R = 1..8 loops (trained at 4), and the learned-exit
# runs with Ouro's Q-exit at q = 0.2, 0.5, 0.8, 0.95 (each appended to the run's evals.jsonl).
# Usage: bench/looped_evals.sh [ATTNLAB_BINARY] [RUN_STORE ...]
set -euo pipefail
bin=${1:-attnlab}
shift || true
if [ $# -gt 0 ]; then stores=("$@"); else stores=(runs/looped runs/looped_mqar); fi
for store in "${stores[@]}"; do
    for run in "$store"/*/; do
        run=${run%/}
        [ -f "$run/summary.json" ] || continue
        grep -q '^loops = ' "$run/config.toml" || continue
        split="val"
        grep -q '^\[data.task\]' "$run/config.toml" && split="test"
        for r in 1 2 3 4 5 6 8; do
            "$bin" eval "$run" --split $split --set eval.loops=$r
        done
        if grep -q '^exit = "learned"' "$run/config.toml"; then
            for q in 0.2 0.5 0.8 0.95; do
                "$bin" eval "$run" --split $split --set eval.exit_q=$q
            done
        fi
    done
done
