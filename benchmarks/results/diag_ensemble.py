"""Would an ensemble help? Trains the default ridge model M times per CV fold (training +
validation users only; the folds and stopping users of metarec.tuning.cv), with seeds
seed .. seed+M-1, and scores the held-out users at every k of the curve for each model alone
and for the mean of the first 2..M models' predictions; prints per k the means (MAE / nDCG@3)
and each ensemble minus the first model with its paired standard error over held-out users.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_ensemble.py 3 artifacts/bench_ens
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np, yaml
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ml100k_quality as mq, cv_tune
from metarec.config import config_from_dict
from metarec.evaluation.report import ALL_SHOTS
from metarec.tuning import cv

M = int(sys.argv[1]); work = Path(sys.argv[2]); dataset = sys.argv[3] if len(sys.argv) > 3 else None
raw = yaml.safe_load(open("params.yaml"))
if dataset:
    raw = cv_tune.variant_params(raw, dataset, Path("artifacts/prepared"), work, "user-split")
cfg = config_from_dict(raw, "params.yaml")
cfg, inputs = mq._inputs(cfg, work)
shots = (*cfg.evaluation.curve_shots, ALL_SHOTS)
names = ["mae", "ndcg_at_3", "ndcg_at_5"]
per = {}
for fold in cv.make_folds(cv.pool_tasks(inputs), 4 if not dataset else 3, shots, cfg.seed):
    preds = []
    for s in range(M):
        c = dataclasses.replace(cfg, seed=cfg.seed + s)
        p, info = cv.train_learner(c, inputs.features, fold.train, fold.stop, "ridge")
        print(fold.index, s, json.dumps(info), file=sys.stderr, flush=True)
        preds.append(p(fold.curve))
    found, _ = cv.train_fold_baselines(cfg, inputs.features, fold.train, fold.stop)
    methods = {f"single{s}": preds[s] for s in range(M)}
    for m in range(2, M + 1):
        methods[f"ens{m}"] = np.mean(preds[:m], 0)
    methods["item_mean"] = found["item_mean"](fold.curve)
    for name, pr in methods.items():
        v = cv.per_task_metrics(pr, fold.curve, names)
        per.setdefault(name, []).append({k: x.reshape(len(fold.shots), len(fold.held)) for k, x in v.items()})
labels = fold.shots
st = {m: {k: np.concatenate([f[k] for f in per[m]], 1) for k in names} for m in per}
for i, shot in enumerate(labels):
    row = []
    for m in st:
        row.append(f"{m} {st[m]['mae'][i].mean():.4f}/{st[m]['ndcg_at_3'][i].mean():.4f}")
    print(shot, " | ".join(row))
    for m in [f"ens{j}" for j in range(2, M + 1)]:
        for k in names:
            d, se = cv.paired(st[m][k][i], st["single0"][k][i])
            print(f"   {m}-single0 {k}: {d:+.4f} ± {se:.4f}")
