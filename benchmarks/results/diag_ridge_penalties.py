"""Are the ridge head's meta-learned penalties a lever? Trains the ridge model (head off) on the
first N of 3 CV folds (training + validation users only, stopping apart from the scored users)
and scores the held-out users at k = 1, 3, 5, 10, 90 ratings with other penalties; prints the
penalties per fold, then per k and variant [MAE, nDCG@3]. Modes:

- ``bias``: three bias penalties: the meta-learned one ("meta"), the empirical-Bayes one from the
  training users' 0-shot residuals ("eb": within-user residual variance over the variance of the
  users' mean residuals, method of moments) and none of the bias adaptation ("inf", 1e6);
- ``scale``: the weight penalties scaled by c = 0.5 .. 30, the bias penalty unchanged
  (benchmarks/results/diag_penalty_scale.py did this on ML-100K under the former CV protocol).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_ridge_penalties.py bias 2 artifacts/bench_eb [ml100k-quintile]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_ridge_penalties.py scale 2 artifacts/bench_ws ml100k-quintile
"""
import sys
from pathlib import Path
import numpy as np, torch, yaml
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ml100k_quality as mq, cv_tune
from metarec.config import config_from_dict
from metarec.tuning import cv
from metarec.data.arrays import limit_support
from metarec.training.loop import predict
from metarec.training.calibration import protocol_kind

mode = sys.argv[1]; nf = int(sys.argv[2]); work = Path(sys.argv[3])
dataset = sys.argv[4] if len(sys.argv) > 4 else None
if mode not in ("bias", "scale"):
    raise SystemExit(f"mode {mode!r}: bias or scale")
raw = yaml.safe_load(open("params.yaml"))
raw["model"]["head_factors"] = False
if dataset:
    raw = cv_tune.variant_params(raw, dataset, Path("artifacts/prepared"), work, "user-split")
cfg = config_from_dict(raw, "params.yaml")
cfg, inputs = mq._inputs(cfg, work)
folds = cv.make_folds(cv.pool_tasks(inputs), 3, (0, "all"), cfg.seed)

def eb_lambda(tasks, pred_fn):
    rows = np.nonzero(protocol_kind(tasks))[0]
    z = limit_support(tasks.subset(rows), 0, seed=0)
    m = z.query_mask.astype(float); n = m.sum(1); ok = n > 1
    e = (z.query_ratings - np.asarray(pred_fn(z), float)) * m
    mean = e.sum(1)[ok] / n[ok]
    within = (((e - np.where(m > 0, e.sum(1, keepdims=True) / np.maximum(n, 1)[:, None], 0)) ** 2) * m).sum(1)[ok]
    s2n = within.sum() / (n[ok] - 1).sum()
    s2b = mean.var(ddof=1) - (s2n / n[ok]).mean()
    return s2n, s2b, s2n / max(s2b, 1e-4)

agg = {}
for fold in folds[:nf]:
    model, lr, res = cv.fit_learner(cfg, inputs.features, fold.train, fold.stop)
    model.eval()
    base = lr.log_lam.detach().clone()
    lam = (base * lr.lam_rate).exp().numpy()
    s2n, s2b, leb = eb_lambda(fold.train, lambda t: predict(model, lr, t, cfg.train))
    print("fold", fold.index, "best", res.best_step, "meta bias lam", lam[-1].round(2), "EB", round(s2n, 3), round(s2b, 4), round(leb, 2), flush=True)
    for k in (1, 3, 5, 10, 90):
        hk = limit_support(fold.held, k, fold.index)
        variants = ((("meta", lam[-1]), ("eb", leb), ("inf", 1e6)) if mode == "bias"
                    else ((c, c) for c in (0.5, 1, 2, 4, 10, 30)))
        for name, val in variants:
            with torch.no_grad():
                lr.log_lam.copy_(base)
                if mode == "bias":
                    lr.log_lam[-1] = float(np.log(val)) / float(lr.lam_rate[-1])
                else:
                    lr.log_lam[:-1] += float(np.log(val)) / lr.lam_rate[:-1]
            v = cv.per_task_metrics(predict(model, lr, hk, cfg.train), hk, ["mae", "ndcg_at_3"])
            agg.setdefault((k, name), []).append(np.stack([v["mae"], v["ndcg_at_3"]]))
        with torch.no_grad():
            lr.log_lam.copy_(base)
for (k, c), vs in sorted(agg.items()):
    a = np.concatenate(vs, 1)
    print(k, c, a.mean(1).round(4).tolist(), flush=True)
