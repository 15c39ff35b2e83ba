"""Would a support-size-dependent ridge penalty help? Trains the default ridge model (head off)
on the first N of the 4 CV folds (training + validation users only) and scores the held-out
users at k = 1, 3, 5, 10, 90 ratings with the meta-learned weight penalties scaled by
c = 0.5, 1, 2, 4, 10 (bias penalty unchanged); prints k, c, [MAE, nDCG@3].

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/results/diag_penalty_scale.py 4 artifacts/bench_diag
"""
import sys
from pathlib import Path
import numpy as np, torch, yaml
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ml100k_quality as mq
from metarec.config import config_from_dict
from metarec.tuning import cv
from metarec.data.arrays import limit_support
from metarec.config.implicit import with_resolved_loss
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.loop import meta_train, predict

raw = yaml.safe_load(open("params.yaml"))
raw["model"].update(head_factors=False, item_factors=0)  # as diagnosed (before head_factors: auto)
for a in sys.argv[3:]:
    k, v = a.split("="); sec, key = k.split("."); raw[sec][key] = yaml.safe_load(v)
cfg = config_from_dict(raw, "params.yaml")
cfg, inputs = mq._inputs(cfg, Path(sys.argv[2]))
folds = cv.make_folds(cv.pool_tasks(inputs), 4, (0, "all"), cfg.seed)
agg = {}
for fold in folds[: int(sys.argv[1])]:
    torch.manual_seed(cfg.seed)
    model = build_model(inputs.features, cfg.model)
    lr = build_learner(model, with_resolved_loss(cfg.meta, cfg.data))
    meta_train(model, lr, fold.train, fold.held, cfg.train, cfg.seed)
    model.eval()
    base = lr.log_lam.detach().clone()
    print("lam", (base * lr.lam_rate).exp().numpy().round(2).tolist()[-5:], flush=True)
    for k in (1, 3, 5, 10, 90):
        hk = limit_support(fold.held, k, fold.index)
        for c in (0.5, 1, 2, 4, 10):
            with torch.no_grad():
                lr.log_lam.copy_(base)
                lr.log_lam[:-1] += np.log(c) / lr.lam_rate[:-1]
            v = cv.per_task_metrics(predict(model, lr, hk, cfg.train), hk, ["mae", "ndcg_at_3"])
            agg.setdefault((k, c), []).append(np.stack([v["mae"], v["ndcg_at_3"]]))
        with torch.no_grad():
            lr.log_lam.copy_(base)
for (k, c), vs in sorted(agg.items()):
    a = np.concatenate(vs, 1)
    print(k, c, a.mean(1).round(4).tolist(), flush=True)
