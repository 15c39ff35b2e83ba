"""Support-size exponents of the ridge penalties chosen after meta-training, on validation users.

`meta.ridge_size_power` meta-learns the exponents p (penalties lam * ((n + 1) / 11) ** p) with
the rest of the model; in CV it helped quintile's 1-rating MAE and cost ML-100K and 5to500 at
10 ratings. This diagnostic asks whether choosing them after training, on the early-stopping
users, keeps the gain where there is one and leaves the other datasets alone.

On each CV fold of training + validation users (metarec.tuning.cv; test users never read) the
default ridge model is trained (factor head off), the exponents (weights, bias) are set to each
point of a grid, and each point is scored on the fold's stopping users along the curve (MAE
averaged over 1, 3, 5, 10 and all ratings). The point kept is the best one if it beats (0, 0)
by more than one standard error of the paired per-user difference, else (0, 0) ("rule"); or
the best point whatever its margin ("best"). The held-out users are then scored at k = 1, 3, 5,
10, all with each and with (0, 0); prints and saves the paired differences (MAE, nDCG@3) over
the held-out users, each user's difference averaged over the training seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_posthoc_power.py \
        --dataset ml100k-quintile --set seed=3 --folds 3 --seeds 0 1 2 \
        --out benchmarks/results/diag_posthoc_power_quintile_seed3.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
import cv_tune  # noqa: E402

from metarec.data.arrays import limit_support  # noqa: E402
from metarec.training.loop import predict  # noqa: E402
from metarec.tuning import cv  # noqa: E402

SHOTS = (1, 3, 5, 10, "all")
GRID = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)


def _set_power(learner: nn.Module, weights: float, bias: float) -> None:
    rate = float(learner.lam_rate[-1])
    with torch.no_grad():
        learner.size_power.copy_(torch.tensor([weights / rate, bias / rate]))


def _curve(model, learner, tasks, cfg, seed: int) -> dict:
    """{k: {metric: (N,)}} at every support size of SHOTS."""
    out = {}
    for k in SHOTS:
        t = tasks if k == "all" else limit_support(tasks, k, seed)
        out[k] = cv.per_task_metrics(predict(model, learner, t, cfg.train), t,
                                     ["mae", "ndcg_at_3"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_tune.fold_arguments(ap, "artifacts/bench_posthoc_power")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    cfg, inputs, layout = cv_tune.fold_setup(
        args.dataset, Path(args.work_dir), args.set, args.folds, (0, "all"), args.params,
        args.prepared, {"model": {"head_factors": False}})
    diffs: dict = {}  # (k, metric) -> list of per-task (chosen - plain)
    fits = []
    for seed, fold in itertools.product(args.seeds, layout):
        run = dataclasses.replace(cfg, seed=seed)
        model, learner, result = cv.fit_learner(run, inputs.features, fold.train, fold.stop)
        model.eval()
        learner.size_power = nn.Parameter(torch.zeros(2), requires_grad=False)
        scored = {}
        for p in itertools.product(GRID, GRID):
            _set_power(learner, *p)
            curve = _curve(model, learner, fold.stop, run, seed + 100 + fold.index)
            scored[p] = np.mean([curve[k]["mae"] for k in SHOTS], 0)
        plain = scored[(0.0, 0.0)]
        best = min(scored, key=lambda p: scored[p].mean())
        d = scored[best] - plain
        se = d.std(ddof=1) / np.sqrt(len(d))
        chosen = best if d.mean() < -se else (0.0, 0.0)
        fits.append({"seed": seed, "fold": fold.index, "best_step": result.best_step,
                     "best": best, "gain": round(float(d.mean()), 5), "se": round(float(se), 5),
                     "chosen": chosen})
        print(json.dumps(fits[-1]), flush=True)
        _set_power(learner, 0.0, 0.0)
        ref = _curve(model, learner, fold.held, run, seed + fold.index)
        for arm, point in (("rule", chosen), ("best", best)):
            _set_power(learner, *point)
            got = _curve(model, learner, fold.held, run, seed + fold.index)
            for k in SHOTS:
                for m in ("mae", "ndcg_at_3"):
                    diffs.setdefault((arm, str(k), m), []).append(got[k][m] - ref[k][m])
    rows = {}
    for (arm, k, m), parts in diffs.items():
        # each training seed scores the same held-out users: average over the seeds per task
        per_seed = len(layout)  # parts run seed by seed, fold by fold within each
        d = np.mean([np.concatenate(parts[i * per_seed:(i + 1) * per_seed])
                     for i in range(len(args.seeds))], 0)
        d = d[np.isfinite(d)]
        rows.setdefault(arm, {}).setdefault(k, {})[m] = f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"
    print(json.dumps(rows, indent=1))
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "set": args.set,
                                          "folds": args.folds, "seeds": args.seeds,
                                          "grid": GRID, "fits": fits,
                                          "minus_plain": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
