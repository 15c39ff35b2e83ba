"""k=0 ranking diagnosis on CV folds (training + validation users only): which part of the ridge
prior ranks? Trains the default ridge model (head off) on the first N of the 4 CV folds and
scores the held-out users with no ratings: the prior, the item offset alone, the prior averaged
over other users' features, the baselines, and item_mean + a * log(count).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/results/diag_k0_ranking.py 2   # repo root
"""
import sys, json
from pathlib import Path
import numpy as np, torch, yaml
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ml100k_quality as mq
from metarec.config import config_from_dict
from metarec.tuning import cv
from metarec.data.arrays import limit_support
from metarec.training.baselines import train_baselines
from metarec.config.implicit import with_resolved_loss
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.loop import meta_train, predict, make_batch

raw = yaml.safe_load(open("params.yaml"))
raw["model"].update(head_factors=False, item_factors=0)  # as diagnosed (before head_factors: auto)
for a in sys.argv[2:]:
    k, v = a.split("="); sec, key = k.split("."); raw[sec][key] = yaml.safe_load(v)
cfg = config_from_dict(raw, "params.yaml")
cfg, inputs = mq._inputs(cfg, Path("artifacts/bench_diag"))
folds = cv.make_folds(cv.pool_tasks(inputs), 4, (0, "all"), cfg.seed)
res = {}
for fold in folds[: int(sys.argv[1])]:
    torch.manual_seed(cfg.seed)
    model = build_model(inputs.features, cfg.model)
    meta = with_resolved_loss(cfg.meta, cfg.data)
    lr = build_learner(model, meta)
    r = meta_train(model, lr, fold.train, fold.held, cfg.train, cfg.seed)
    model.eval()
    held0 = limit_support(fold.held, 0, 0)
    found, _ = train_baselines(inputs.features, fold.train, fold.held, cfg.model, meta, cfg.train, cfg.seed)
    names = ["ndcg_at_3", "mae"]
    def m(pred): 
        v = cv.per_task_metrics(pred, held0, names); return {k: round(float(x.mean()), 4) for k, x in v.items()}
    out = {"prior": m(predict(model, lr, held0, cfg.train)), "item_mean": m(found["item_mean"].predict(held0)),
           "global": m(found["global"].predict(held0))}
    # item offset only
    with torch.no_grad():
        off = model.offset(torch.as_tensor(held0.query_items)).numpy() + 3.5
        out["offset_only"] = m(off)
        # prior with users shuffled
        sh = held0.subset(np.arange(len(held0)))
        perm = np.random.default_rng(0).permutation(len(held0))
        uc = model.user_table.clone()
        # user-averaged prior: average the prior over 50 random other users
        acc = np.zeros_like(off)
        ids = held0.user_ids.copy()
        rng = np.random.default_rng(1)
        T = 30
        for t in range(T):
            p = rng.permutation(len(held0))
            b = make_batch(model.user_table, held0, np.arange(len(held0)), torch.device("cpu"))
            ub = make_batch(model.user_table, held0, p, torch.device("cpu"))
            b2 = b.__class__(**{**b.__dict__, "user_cat": ub.user_cat}) if hasattr(b, "__dict__") else b._replace(user_cat=ub.user_cat)
            acc += lr.predict(model, b2).numpy()
        out["prior_user_avg"] = m(acc / T)
        b = make_batch(model.user_table, held0, perm, torch.device("cpu"))
    im = found["item_mean"].predict(held0)
    items = held0.query_items
    cnt = np.bincount(np.concatenate([fold.train.support_items[fold.train.support_mask.astype(bool)], fold.train.query_items[fold.train.query_mask.astype(bool)]]), minlength=int(items.max()) + 1)
    for a in (0.02, 0.05, 0.1, 0.2):
        out[f"item_mean+{a}log"] = m(im + a * np.log1p(cnt[items]))
    out["train"] = {"best_step": r.best_step, "steps": r.steps}
    res[fold.index] = out
    print(fold.index, json.dumps(out), flush=True)
