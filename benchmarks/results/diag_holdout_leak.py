"""How optimistic are the fitted item means on the users they were fitted on? (diagnostic)

The item-mean predictor (shrunk by ``model.item_stats_shrinkage`` pseudo-ratings, as the model's
item statistics and offset) fitted on every rating of the training tasks, scored on those tasks'
query ratings as fitted and leave-one-out (each rating removed from its own item's mean, what
``train.hold_out`` gives meta-training), and on the validation tasks (users it never saw).
Reads the pipeline's task sets (``metarec data prepare``, then the tasks stage). Not part of metarec.

    .venv/bin/python benchmarks/results/diag_holdout_leak.py [artifacts/tasks]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SHRINK = 5.0


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/tasks")
    train, valid = load(root / "train.npz"), load(root / "valid.npz")
    n = 1 + max(int(t[k].max()) for t in (train, valid) for k in ("support_items", "query_items"))
    total, count = np.zeros(n), np.zeros(n)
    for part in ("support", "query"):
        m = train[f"{part}_mask"].astype(bool)
        np.add.at(total, train[f"{part}_items"][m], train[f"{part}_ratings"][m])
        np.add.at(count, train[f"{part}_items"][m], 1)
    mu = total.sum() / count.sum()
    fitted = (total + SHRINK * mu) / (count + SHRINK)
    q, m, r = train["query_items"], train["query_mask"].astype(bool), train["query_ratings"]
    loo = (total[q] - r + SHRINK * mu) / (count[q] - 1 + SHRINK)
    print(f"training users' query ratings ({int(m.sum())}): item-mean MAE as fitted "
          f"{np.abs(fitted[q] - r)[m].mean():.4f}, leave-one-out {np.abs(loo - r)[m].mean():.4f}")
    q, m, r = valid["query_items"], valid["query_mask"].astype(bool), valid["query_ratings"]
    print(f"validation users' query ratings ({int(m.sum())}): item-mean MAE "
          f"{np.abs(fitted[q] - r)[m].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
