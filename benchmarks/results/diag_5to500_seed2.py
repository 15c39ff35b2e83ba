"""5to500, seed 2 (the split whose meta-training never beats its start): validation and training
MAE at k = 0, 1, 10, all for the untrained model and after 50 / 300 steps (early stopping on
training users 200..299 instead, so the trained weights are kept). Needs the seed-2 workspace:
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/curves.py --dataset ml100k-5to500 --seeds 2 \\
      --work-dir /tmp/w5 --out-dir /tmp/w5out --set model.head_factors=false
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/results/diag_5to500_seed2.py
"""
import dataclasses, numpy as np, torch, yaml
from metarec.config import config_from_dict
from metarec.pipeline.inputs import load_inputs
from metarec.models.estimator import build_model
from metarec.meta.learners import build_learner
from metarec.training.loop import meta_train, predict, fit_item_stats, init_output_bias
from metarec.data.arrays import limit_support
raw = yaml.safe_load(open("params.yaml"))
W = "/tmp/w5/seed2"  # the curves.py workspace of the docstring
cfg = config_from_dict(raw)
cfg = dataclasses.replace(cfg, seed=2, features=dataclasses.replace(cfg.features, out_dir=W+"/features"),
    tasks=dataclasses.replace(cfg.tasks, out_dir=W+"/tasks"),
    model=dataclasses.replace(cfg.model, head_factors=False, item_factors=0))
inp = load_inputs(cfg.features, cfg.tasks)
tr, va = inp.train, inp.valid
print("support sizes train", np.percentile(tr.support_mask.sum(1), [10,50,90]), "valid", np.percentile(va.support_mask.sum(1), [10,50,90]))
def curve(model, lr, tasks):
    out = {}
    m = tasks.query_mask.astype(bool)
    for k in (0, 1, 10, "all"):
        sub = tasks if k == "all" else limit_support(tasks, k, 0)
        p = predict(model, lr, sub, cfg.train)
        out[k] = round(float(np.abs(p - tasks.query_ratings)[m].mean()), 4)
    return out
for steps in (0, 50, 300):
    torch.manual_seed(2)
    model = build_model(inp.features, cfg.model)
    lr = build_learner(model, cfg.meta)
    if steps == 0:
        fit_item_stats(model, tr); init_output_bias(model, tr)
    else:
        c = dataclasses.replace(cfg.train, max_steps=steps, patience=1000, progress=False, calibrate_prior=False)
        r = meta_train(model, lr, tr, tr.subset(np.arange(200, 300)), c, 2); print("best", r.best_step)
    print(steps, "valid", curve(model, lr, va), "train-sub", curve(model, lr, tr.subset(np.arange(200))), "lam", (lr.log_lam*lr.lam_rate).exp().detach().numpy()[[0,1,-1]].round(3))
