"""K-fold cross-validation over the training + validation users, for tuning.

The protocol's test users are never read: the training and validation tasks are pooled and
split into ``--folds`` folds of users (users with ``tasks.max_ratings`` ratings or more only
train); each fold is held out once (early stopping and scoring
on it) while the others train. The held-out tasks are scored along the adaptation curve: with
their support cut to each of ``evaluation.curve_shots`` random ratings (0, 1, 3, 5, 10; the
evaluation's ``limit_support``) and with all of it (``all``). Prints, per support size and
method, the mean of every metric over all held-out tasks and the paired difference to each
baseline (candidate minus baseline, with its standard error over tasks), so that settings can
be compared on ~5x more users than one validation set, and a markdown table of MAE / nDCG@3.

    .venv/bin/python benchmarks/cv_tune.py --folds 4 --set model.item_id=true
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ml100k_quality as mq  # noqa: E402

from metarec.config import config_from_dict  # noqa: E402
from metarec.data.arrays import TaskArrays  # noqa: E402
from metarec.evaluation.scoring import ALL_SHOTS, limit_support  # noqa: E402

PAIRED = ("mae", "ndcg_at_3", "ndcg_at_5", "precision_at_5")


def _concat(*parts: TaskArrays) -> TaskArrays:
    return TaskArrays(**{k: np.concatenate([getattr(p, k) for p in parts], 0)
                         for k in parts[0].__dict__})


def _table(out: dict[str, dict], shots: list[str], methods: list[str]) -> str:
    """Markdown: one row per method, MAE / nDCG@3 per support size."""
    rows = ["| method | " + " | ".join(shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for m in methods:
        rows.append(f"| {m} | " + " | ".join(
            f"{out[k][m]['mae']:.3f} / {out[k][m]['ndcg_at_3']:.3f}" for k in shots) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--protocol", choices=["user-split", "melu", "configured"], default="user-split")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--learners", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--work-dir", default="artifacts/bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raw = yaml.safe_load(Path(args.params).read_text())
    if args.protocol != "configured":
        raw.setdefault("tasks", {})["protocol"] = args.protocol
    raw.setdefault("train", {})["progress"] = False
    mq._override(raw, args.set)
    cfg = config_from_dict(raw, args.params)
    cfg, inputs = mq._inputs(cfg, Path(args.work_dir))
    learners = args.learners.split(",") if args.learners else [cfg.meta.learner]
    pool = _concat(inputs.train, inputs.valid)
    # Folds of users by id; tasks whose support fills the width (users with max_ratings ratings
    # or more, subsampled: training-only users) always train, so the held-out users are of the
    # protocol's kind and the folds do not depend on how many such users the pool holds.
    full = pool.support_mask.all(1)
    held_ids = np.random.default_rng(1234).permutation(np.sort(pool.user_ids[~full]))
    order = np.arange(len(pool))
    folds = [np.nonzero(np.isin(pool.user_ids, ids))[0]
             for ids in np.array_split(held_ids, args.folds)]
    shot_sizes = list(cfg.evaluation.curve_shots)
    shots = [str(n) for n in shot_sizes] + [ALL_SHOTS]
    per_task: dict[str, list[dict[str, np.ndarray]]] = {}
    for k, held in enumerate(folds):
        rest = np.setdiff1d(order, held)
        valid = pool.subset(held)
        # The held-out tasks once per support size, stacked: (len(shots) + 1) * len(held) tasks.
        curve = _concat(*(limit_support(valid, n, cfg.seed + k) for n in shot_sizes), valid)
        inputs_k = mq.Inputs(features=inputs.features,
                             sets={"cv_train": pool.subset(rest), "cv_valid": valid,
                                   "cv_curve": curve},
                             training=("cv_train",), validation=("cv_valid",),
                             manifest=inputs.manifest)
        table = mq.run(cfg, inputs_k, learners, "test", baselines=True, per_task=True)
        print(f"fold {k}: " + json.dumps(table.pop("_training")), file=sys.stderr)
        for method, values in table.items():
            per_task.setdefault(method, []).append(
                {m: v.reshape(len(shots), len(held)) for m, v in values.items()})
    out: dict[str, dict] = {}
    methods = [m for m in per_task if not m.startswith("_")]
    stacked = {m: {k: np.concatenate([f[k] for f in per_task[m]], 1) for k in per_task[m][0]}
               for m in methods}  # (len(shots), tasks) per metric
    for i, shot in enumerate(shots):
        out[shot] = {m: {k: round(float(v[i].mean()), 4) for k, v in stacked[m].items()
                         if k in PAIRED} for m in methods}
        for cand in learners:
            for base in methods:
                if base == cand:
                    continue
                diffs = {}
                for k in PAIRED:
                    d = stacked[cand][k][i] - stacked[base][k][i]
                    diffs[k] = f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"
                out[shot][f"{cand} - {base}"] = diffs
    text = json.dumps(out, indent=1)
    print(text)
    print(_table(out, shots, methods))
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
