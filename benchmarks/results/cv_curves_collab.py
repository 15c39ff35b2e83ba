"""Cross-validated adaptation curves of the configured learner (ridge), for choosing defaults.

Like ``benchmarks/cv_tune.py`` (same folds of the train + valid users; the test users are never
read), but trains the learner only (no network baselines) and scores each held-out fold at
support sizes k = 0, 1, 3, 5, 10 and all, next to item_mean and, on ``lowrank``, the oracle
(MAE gap closed = (item_mean - learner) / (item_mean - oracle)).

    python benchmarks/results/cv_curves_collab.py --dataset lowrank --set model.item_factors=16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import curves
import cv_tune
import ml100k_quality as mq
import suite

from metarec.config import config_from_dict
from metarec.evaluation.metrics import task_scores
from metarec.evaluation.scoring import limit_support
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.baselines import ItemMeanBaseline, task_ratings
from metarec.training.loop import meta_train, predict

SHOTS = (0, 1, 3, 5, 10, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml100k")
    ap.add_argument("--protocol", default="user-split")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--work-dir", default="artifacts/bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["tasks"]["protocol"] = args.protocol
    raw["train"]["progress"] = False
    work, truth = Path(args.work_dir), None
    if args.dataset in suite.VARIANTS:
        work = work.resolve() / "suite" / args.dataset
        raw = cv_tune.variant_params(raw, args.dataset, Path("artifacts/prepared"), work,
                                     args.protocol)
        found = sorted(work.rglob("truth.npz"))
        truth = suite.load_truth(found[0]) if found else None
    mq._override(raw, args.set)
    cfg, inputs = mq._inputs(config_from_dict(raw, "params"), work)
    pool = cv_tune._concat(inputs.train, inputs.valid)
    order = np.random.default_rng(1234).permutation(len(pool))
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    info = []
    for held in np.array_split(order, args.folds):
        train, valid = pool.subset(np.setdiff1d(order, held)), pool.subset(held)
        start = time.time()
        torch.manual_seed(cfg.seed)
        model = build_model(inputs.features, cfg.model)
        learner = build_learner(model, cfg.meta)
        res = meta_train(model, learner, train, valid, cfg.train, cfg.seed)
        model.eval()
        info.append({"best_step": res.best_step, "steps": res.steps,
                     "seconds": round(time.time() - start, 1)})
        print(json.dumps(info[-1]), file=sys.stderr)
        items, ratings = task_ratings(train)
        item_mean = ItemMeanBaseline.fit(items, ratings, len(inputs.features.item_ids),
                                         cfg.meta.item_mean_shrinkage)
        for k in SHOTS:
            tasks = valid if k is None else limit_support(valid, k, seed=0)
            preds = {"ridge": predict(model, learner, tasks, cfg.train),
                     "item_mean": item_mean.predict(tasks)}
            if truth is not None:
                users = np.broadcast_to(tasks.user_ids[:, None], tasks.query_items.shape)
                preds["oracle"] = suite.oracle_predict(
                    truth, users, inputs.features.item_ids[tasks.query_items])
            for name, pred in preds.items():
                ts = task_scores(pred, tasks.query_ratings, tasks.query_mask, ["mae", "ndcg_at_3"])
                cell = rows.setdefault(name, {}).setdefault("all" if k is None else str(k), [])
                cell.append(np.stack([ts.abs_err / np.maximum(ts.count, 1),
                                      ts.ranking["ndcg_at_3"]]))
    out = {"dataset": args.dataset, "protocol": args.protocol, "set": args.set,
           "training": info, "curves": {}}
    for name, by_k in rows.items():
        out["curves"][name] = {k: dict(zip(("mae", "ndcg_at_3"), np.concatenate(v, 1).mean(1)
                                           .round(4).tolist())) for k, v in by_k.items()}
    if truth is not None:
        c = out["curves"]
        out["curves"]["gap_closed"] = {
            k: round(curves._gap(c["ridge"][k]["mae"], c["item_mean"][k]["mae"],
                                 c["oracle"][k]["mae"]), 4) for k in c["ridge"]}
    text = json.dumps(out, indent=1)
    _ = Path(args.out).write_text(text + "\n") if args.out else print(text)


if __name__ == "__main__":
    main()
