"""How far can a classic collaborative model take the RecBole P@5 on these folds? (diagnostic)

Issue 14 aims at RecBole nDCG@5 and P@5 >= 0.65 on ML-100K user-split; the ridge learner reads
0.61 .. 0.63. This puts a strong transductive reference beside it on the folds of
``benchmarks/cv_tune.py`` (training + validation users only; test users never read): biased
matrix factorisation by alternating least squares on every rating of the fold's training tasks
(global mean, user and item biases, f factors, penalty lam on each), then folded in per held-out
task from its support at each support size (the user's bias and factors by ridge regression on
the fixed item side, penalty lam). Every point of the (f, lam) grid is scored on the held-out
users themselves, so the best point is an optimistic ceiling, not a fair competitor. Also the
mean of ridge's and the best factor model's scores, item_mean (shrunk) for scale, and
``item_mean_more``, a reference rather than a method: unshrunk item means that also count the
other held-out users' ratings (each user's own query rating left out), an item-only order
from a third more users than any fold trains on. Prints
MAE / nDCG@3 / nDCG@5 / RecBole nDCG@5 / P@5 per method and support size, with the paired
difference to ridge (mean ± standard error over held-out users). Not part of metarec.

The factor model is fitted here rather than with :mod:`metarec.models.fitting`'s ALS on
purpose: that one fits the factor head's input (user-mean-centred ratings, no biases, factors
rescaled to unit scale), while the reference wanted here is the textbook biased MF with its
user bias fitted jointly, folded in the same way for every support size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_recbole_ceiling.py \
        --out benchmarks/results/diag_recbole_ceiling_ml100k.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cv_tune  # noqa: E402

from metarec.data.arrays import TaskArrays  # noqa: E402
from metarec.tuning import cv  # noqa: E402

METRICS = ["mae", "ndcg_at_3", "ndcg_at_5", "recbole_ndcg_at_5", "precision_at_5"]
GRID = [(f, lam) for f in (8, 32, 64) for lam in (2.0, 8.0, 20.0)]


def triples(tasks: TaskArrays, query: bool = True) -> tuple[np.ndarray, ...]:
    """(row, item, rating) of every real support (and query) rating, rows = task index."""
    parts = [(tasks.support_items, tasks.support_mask, tasks.support_ratings)]
    if query:
        parts.append((tasks.query_items, tasks.query_mask, tasks.query_ratings))
    rows, items, vals = [], [], []
    for it, mask, r in parts:
        rr = np.broadcast_to(np.arange(len(tasks))[:, None], it.shape)
        rows.append(rr[mask]), items.append(it[mask]), vals.append(r[mask])
    return np.concatenate(rows), np.concatenate(items), np.concatenate(vals).astype(np.float64)


def _solve(groups: np.ndarray, n: int, other: np.ndarray, target: np.ndarray, members: np.ndarray,
           lam: float) -> np.ndarray:
    """Per group g in 0..n-1: ridge solution of target ~ [1, other[members]] (bias + factors)."""
    f = other.shape[1]
    out = np.zeros((n, f + 1))
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n + 1))
    eye = lam * np.eye(f + 1)
    for g in range(n):
        sel = order[bounds[g]:bounds[g + 1]]
        if len(sel) == 0:
            continue
        x = np.concatenate([np.ones((len(sel), 1)), other[members[sel]]], 1)
        out[g] = np.linalg.solve(x.T @ x + eye, x.T @ target[sel])
    return out


def fit_mf(train: TaskArrays, n_items: int, f: int, lam: float, iters: int = 12, seed: int = 0
           ) -> tuple[float, np.ndarray, np.ndarray]:
    """Biased MF by ALS on every rating of ``train``: (global mean, (I,) item bias, (I, f) factors)."""
    rows, items, vals = triples(train)
    mu = float(vals.mean())
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 0.1, (n_items, f))
    bi = np.zeros(n_items)
    for _ in range(iters):
        user = _solve(rows, len(train), q, vals - mu - bi[items], items, lam)
        bu, p = user[:, 0], user[:, 1:]
        item = _solve(items, n_items, p, vals - mu - bu[rows], rows, lam)
        bi, q = item[:, 0], item[:, 1:]
    return mu, bi, q


def fold_in(tasks: TaskArrays, mu: float, bi: np.ndarray, q: np.ndarray, lam: float) -> np.ndarray:
    """(N, Q) scores of each task's query items, its bias and factors fitted on its support."""
    rows, items, vals = triples(tasks, query=False)
    user = _solve(rows, len(tasks), q, vals - mu - bi[items], items, lam)
    qi = tasks.query_items
    return mu + bi[qi] + user[:, :1] + np.einsum("nqf,nf->nq", q[qi], user[:, 1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_tune.fold_arguments(ap, "artifacts/bench_knn", folds=4)
    args = ap.parse_args()
    cfg, inputs, layout = cv_tune.fold_setup(args.dataset, Path(args.work_dir), args.set,
                                             args.folds, None, args.params, args.prepared)
    n_items = len(inputs.features.item_ids)
    per_fold: dict[str, list[dict[str, np.ndarray]]] = {}
    raw: list[dict[str, np.ndarray]] = []
    for fold in layout:
        ridge, info = cv.train_learner(cfg, inputs.features, fold.train, fold.stop, "ridge")
        print(f"fold {fold.index}: {json.dumps(info)}", file=sys.stderr)
        preds = {"ridge": ridge(fold.curve)}
        _, items, vals = triples(fold.train)
        mu = vals.mean()
        count = np.bincount(items, minlength=n_items)
        total = np.bincount(items, weights=vals, minlength=n_items)
        preds["item_mean"] = ((total + 5 * mu) / (count + 5))[fold.curve.query_items]
        # a reference with more data, not a method: unshrunk item means that also count every
        # other held-out user's ratings (each task's own query rating taken out again)
        _, h_items, h_vals = triples(fold.held)
        qi, own = fold.curve.query_items, fold.curve.query_ratings
        count_all = (count + np.bincount(h_items, minlength=n_items))[qi] - 1
        total_all = (total + np.bincount(h_items, weights=h_vals, minlength=n_items))[qi] - own
        preds["item_mean_more"] = np.where(count_all > 0, total_all / np.maximum(count_all, 1), mu)
        for f, lam in GRID:
            mu_f, bi, q = fit_mf(fold.train, n_items, f, lam)
            preds[f"mf{f}_lam{lam:g}"] = fold_in(fold.curve, mu_f, bi, q, lam)
            print(f"  mf f={f} lam={lam}", file=sys.stderr)
        for method, p in preds.items():
            per_fold.setdefault(method, []).append(cv_tune.fold_scores(p, fold, METRICS))
        raw.append(preds)
    # the grid point with the best full-support P@5 over the held-out users (optimistic)
    best = max((m for m in per_fold if m.startswith("mf")),
               key=lambda m: np.concatenate([f["precision_at_5"][-1] for f in per_fold[m]]).mean())
    per_fold[f"ridge+{best}"] = [cv_tune.fold_scores(0.5 * (preds["ridge"] + preds[best]), fold,
                                                     METRICS) for fold, preds in zip(layout, raw)]
    cv_tune.emit({"best_mf": best, **cv_tune.paired_to(per_fold, layout[0].shots, METRICS)},
                 args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
