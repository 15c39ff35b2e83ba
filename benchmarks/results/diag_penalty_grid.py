"""Are the meta-learned ridge penalties right at every support size, on any suite dataset?

Trains the default ridge model (factor head off, as on the datasets where `auto` keeps it off)
on the first N CV folds of training + validation users (metarec.tuning.cv, stopping apart from
the scored users; test users never read), then scores the held-out users at k = 1, 3, 5, 10 and
all ratings with the meta-learned bias penalty scaled by cb and the weight penalties by cw.
Prints and saves, per (k, cb, cw), the held-out MAE and nDCG@3 and their paired difference to
(cb, cw) = (1, 1) with its standard error.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_penalty_grid.py \
        --dataset ml100k-quintile --set seed=3 --folds 3 --out benchmarks/results/diag_penalty_grid_quintile.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
import cv_tune  # noqa: E402

from metarec.data.arrays import limit_support  # noqa: E402
from metarec.training.loop import predict  # noqa: E402
from metarec.tuning import cv  # noqa: E402

SHOTS = (1, 3, 5, 10, "all")
SCALES = ((1, 1), (2, 1), (4, 1), (10, 1), (100, 1), (1, 2), (1, 4), (4, 4), (0.5, 1), (1, 0.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_tune.fold_arguments(ap, "artifacts/bench_penalty_grid")
    ap.add_argument("--use-folds", type=int, default=None, help="train only the first N folds")
    args = ap.parse_args(argv)
    cfg, inputs, layout = cv_tune.fold_setup(
        args.dataset, Path(args.work_dir), args.set, args.folds, (0, "all"), args.params,
        args.prepared, {"model": {"head_factors": False}})
    rows: dict[tuple, list[np.ndarray]] = {}
    lams = []
    for fold in layout[: args.use_folds or args.folds]:
        model, learner, result = cv.fit_learner(cfg, inputs.features, fold.train, fold.stop)
        model.eval()
        base = learner.log_lam.detach().clone()
        lam = learner.ridge_lambda().detach().numpy()
        lams.append({"fold": fold.index, "best_step": result.best_step,
                     "bias": float(lam[-1]), "weights_median": float(np.median(lam[:-1])),
                     "size_power": (None if learner.size_power is None else
                                    learner.ridge_size_power().detach()[[0, -1]].tolist())})
        print(json.dumps(lams[-1]), flush=True)
        for k in SHOTS:
            held = fold.held if k == "all" else limit_support(fold.held, k, cfg.seed + fold.index)
            for cb, cw in SCALES:
                with torch.no_grad():
                    learner.log_lam.copy_(base)
                    learner.log_lam[-1] += np.log(cb) / learner.lam_rate[-1]
                    learner.log_lam[:-1] += np.log(cw) / learner.lam_rate[:-1]
                v = cv.per_task_metrics(predict(model, learner, held, cfg.train), held,
                                        ["mae", "ndcg_at_3"])
                rows.setdefault((k, cb, cw), []).append(np.stack([v["mae"], v["ndcg_at_3"]]))
            with torch.no_grad():
                learner.log_lam.copy_(base)
    out = []
    for (k, cb, cw), vs in rows.items():
        a = np.concatenate(vs, 1)
        ref = np.concatenate(rows[(k, 1, 1)], 1)
        d = a - ref
        se = d.std(1, ddof=1) / np.sqrt(d.shape[1])
        out.append({"k": k, "cb": cb, "cw": cw, "mae": round(float(a[0].mean()), 4),
                    "ndcg_at_3": round(float(a[1].mean()), 4),
                    "d_mae": f"{d[0].mean():+.4f} ± {se[0]:.4f}",
                    "d_ndcg_at_3": f"{d[1].mean():+.4f} ± {se[1]:.4f}", "tasks": int(a.shape[1])})
        print(json.dumps(out[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "set": args.set,
                                          "folds": args.folds, "fits": lams, "rows": out},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
