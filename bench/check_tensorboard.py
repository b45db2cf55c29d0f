"""Reads a run's TensorBoard event file with TensorBoard's own reader and checks every scalar
against the run's metrics.jsonl (an independent check of attnlab's hand-written encoder).

    python3 -m venv .venv-tb && .venv-tb/bin/pip install tensorboard
    .venv-tb/bin/python bench/check_tensorboard.py runs/<experiment>/<run-id>
"""
import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run: str) -> int:
    acc = EventAccumulator(run, size_guidance={"scalars": 0})
    acc.Reload()
    got = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    want = {}
    with open(f"{run}/metrics.jsonl") as f:
        for line in f:
            m = json.loads(line)
            keys = {"train": [("train/loss", "loss"), ("train/lr", "lr"), ("train/tokens_per_sec", "tokens_per_sec")],
                    "eval": [("val/loss", "val_loss"), ("val/train_loss", "train_loss"), ("val/accuracy", "val_accuracy")]}[m["kind"]]
            for tag, key in keys:
                if m.get(key) is not None:
                    want.setdefault(tag, {})[m["step"]] = m[key]
    assert set(got) == set(want), (sorted(got), sorted(want))
    n = 0
    for tag, steps in want.items():
        assert set(got[tag]) == set(steps), (tag, sorted(got[tag]), sorted(steps))
        for step, v in steps.items():
            assert math.isclose(got[tag][step], v, rel_tol=1e-6), (tag, step, got[tag][step], v)
            n += 1
    print(f"{run}: {n} scalars in {len(want)} tags match metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
