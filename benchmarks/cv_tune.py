"""K-fold cross-validation over the training + validation users, for tuning.

The protocol's test users are never read: the training and validation tasks are pooled and
split into ``--folds`` folds of users; each fold is held out once (early stopping and scoring
on it) while the others train. Prints, per method, the mean of every metric over all held-out
tasks and the paired difference to each baseline (candidate minus baseline, with its standard
error over tasks), so that settings can be compared on ~5x more users than one validation set.

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

PAIRED = ("mae", "ndcg_at_3", "ndcg_at_5", "precision_at_5")


def _concat(a: TaskArrays, b: TaskArrays) -> TaskArrays:
    return TaskArrays(**{k: np.concatenate([v, getattr(b, k)], 0) for k, v in a.__dict__.items()})


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
    order = np.random.default_rng(1234).permutation(len(pool))
    folds = np.array_split(order, args.folds)
    per_task: dict[str, list[dict[str, np.ndarray]]] = {}
    for k, held in enumerate(folds):
        rest = np.setdiff1d(order, held)
        inputs_k = mq.Inputs(features=inputs.features,
                             sets={"cv_train": pool.subset(rest), "cv_valid": pool.subset(held)},
                             training=("cv_train",), validation=("cv_valid",),
                             manifest=inputs.manifest)
        table = mq.run(cfg, inputs_k, learners, "valid", baselines=True, per_task=True)
        print(f"fold {k}: " + json.dumps(table.pop("_training")), file=sys.stderr)
        for method, values in table.items():
            per_task.setdefault(method, []).append(values)
    out: dict[str, dict] = {}
    methods = [m for m in per_task if not m.startswith("_")]
    stacked = {m: {k: np.concatenate([f[k] for f in per_task[m]]) for k in per_task[m][0]}
               for m in methods}
    for m in methods:
        out[m] = {k: round(float(v.mean()), 4) for k, v in stacked[m].items() if k in PAIRED}
    for cand in learners:
        for base in methods:
            if base == cand:
                continue
            diffs = {}
            for k in PAIRED:
                d = stacked[cand][k] - stacked[base][k]
                diffs[k] = f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"
            out[f"{cand} - {base}"] = diffs
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
