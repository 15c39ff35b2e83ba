"""Is an item-item neighbourhood correction complementary to the ridge learner? (diagnostic)

The folds of ``benchmarks/cv_tune.py`` (training + validation users only, stopping on 10% of
each fold's training users); per fold the default ridge learner trains as there, and an item-kNN
residual model is fitted on the fold's training tasks (support + query ratings): shrunk item
means m (5 pseudo-ratings), user-centred cosine similarities w shrunk by co-rating counts
(n / (n + 20)). For each held-out task at each support size the correction
c_j = sum_i w_ij d_i / (sum_i |w_ij| + 1) over the support, d_i = r_i - m_i - b (b: the
support's mean residual; ``knnU``: without b), is added to ridge's score with weight a; ``knn``
alone is m + b + c. ``ridge+<a>choice`` adds a times the "which items were rated" signal
(:func:`choice_parts`; SVD++'s implicit feedback, ratings ignored) instead, ``ridge+<b>item``
b times the item mean centred over the query (more or less of the item effect in each user's
order). Prints MAE / nDCG@3 / nDCG@5 / P@5 per method and support size, with the
paired difference to ridge (mean ± standard error over held-out users). Not part of metarec.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_knn_blend.py \
        --out benchmarks/results/diag_knn_blend_ml100k.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_knn_blend.py --folds 3 \
        --dataset D --work-dir artifacts/bench_knn_D --out benchmarks/results/diag_knn_blend_D.json
    # D = ml100k-quintile (with --set seed=3), ml100k-halfstar, ml100k-5to500, lowrank
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

METRICS = ["mae", "ndcg_at_3", "ndcg_at_5", "precision_at_5"]
WEIGHTS = (0.5, 1.0, 1.5)
CHOICE_WEIGHTS = (-1.0, -0.3, 0.3, 1.0)
ITEM_WEIGHTS = (-0.25, 0.25, 0.5)


def knn_model(train: TaskArrays, n_items: int, shrink_co: float = 20.0,
              item_shrink: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(I,) shrunk item means and (I, I) shrunk cosine similarities of user-centred ratings,
    from every rating (support and query) of the training tasks."""
    ratings = np.zeros((len(train), n_items))
    seen = np.zeros_like(ratings)
    rows = np.arange(len(train))[:, None]
    for items, mask, values in ((train.support_items, train.support_mask, train.support_ratings),
                                (train.query_items, train.query_mask, train.query_ratings)):
        r = np.broadcast_to(rows, items.shape)
        ratings[r[mask], items[mask]] = values[mask]
        seen[r[mask], items[mask]] = 1
    mu = ratings.sum() / seen.sum()
    item_mean = (ratings.sum(0) + item_shrink * mu) / (seen.sum(0) + item_shrink)
    user_mean = ratings.sum(1) / np.maximum(seen.sum(1), 1)
    centred = np.where(seen > 0, ratings - user_mean[:, None], 0.0)
    gram = centred.T @ centred
    norm = np.sqrt(np.diag(gram)) + 1e-9
    co = seen.T @ seen
    sim = gram / np.outer(norm, norm) * (co / (co + shrink_co))
    np.fill_diagonal(sim, 0.0)
    return item_mean, sim


def knn_parts(tasks: TaskArrays, item_mean: np.ndarray, sim: np.ndarray,
              centred: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, Q) m + b (item mean plus the support's mean residual) and the correction c."""
    items, mask = tasks.support_items, tasks.support_mask
    res = np.where(mask, tasks.support_ratings - item_mean[items], 0.0)
    n = mask.sum(1)
    b = np.where(n > 0, res.sum(1) / np.maximum(n, 1), 0.0)
    w = sim[tasks.query_items[:, :, None], items[:, None, :]] * mask[:, None, :]
    dev = np.where(mask, res - (b[:, None] if centred else 0.0), 0.0)
    corr = np.einsum("nqs,ns->nq", w, dev) / (np.abs(w).sum(2) + 1.0)
    return item_mean[tasks.query_items] + b[:, None], corr


def choice_parts(tasks: TaskArrays, train: TaskArrays, n_items: int) -> np.ndarray:
    """(N, Q) the "which items did the user rate" signal (SVD++'s implicit feedback): each
    query item's mean co-occurrence cosine (rated by the same training users, ratings
    ignored) with the task's support items, centred over the task's query items so that only
    the order within a user moves; 0 without support."""
    seen = np.zeros((len(train), n_items))
    rows = np.arange(len(train))[:, None]
    for items, mask in ((train.support_items, train.support_mask),
                        (train.query_items, train.query_mask)):
        seen[np.broadcast_to(rows, items.shape)[mask], items[mask]] = 1
    co = seen.T @ seen
    count = np.sqrt(np.diag(co)) + 1e-9
    occ = co / np.outer(count, count)
    np.fill_diagonal(occ, 0.0)
    mask = tasks.support_mask
    w = occ[tasks.query_items[:, :, None], tasks.support_items[:, None, :]] * mask[:, None, :]
    c = w.sum(2) / np.maximum(mask.sum(1), 1)[:, None]
    qm = tasks.query_mask
    centre = (c * qm).sum(1, keepdims=True) / np.maximum(qm.sum(1, keepdims=True), 1)
    return np.where(qm, c - centre, 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_tune.fold_arguments(ap, "artifacts/bench_knn", folds=4)
    args = ap.parse_args()
    cfg, inputs, layout = cv_tune.fold_setup(args.dataset, Path(args.work_dir), args.set,
                                             args.folds, None, args.params, args.prepared)
    per_fold: dict[str, list[dict[str, np.ndarray]]] = {}
    for fold in layout:
        ridge, info = cv.train_learner(cfg, inputs.features, fold.train, fold.stop, "ridge")
        print(f"fold {fold.index}: {json.dumps(info)}", file=sys.stderr)
        item_mean, sim = knn_model(fold.train, len(inputs.features.item_ids))
        base, corr = knn_parts(fold.curve, item_mean, sim)
        _, corr_u = knn_parts(fold.curve, item_mean, sim, centred=False)
        pred = ridge(fold.curve)
        preds = {"ridge": pred, "knn": base + corr}
        choice = choice_parts(fold.curve, fold.train, len(inputs.features.item_ids))
        for a in CHOICE_WEIGHTS:
            preds[f"ridge+{a}choice"] = pred + a * choice
        # the item effect's weight in each user's order: + b (m_j - the query's mean m)
        m, qm = item_mean[fold.curve.query_items], fold.curve.query_mask
        centre = (m * qm).sum(1, keepdims=True) / np.maximum(qm.sum(1, keepdims=True), 1)
        m = np.where(qm, m - centre, 0.0)
        for b in ITEM_WEIGHTS:
            preds[f"ridge+{b}item"] = pred + b * m
        for a in WEIGHTS:
            preds[f"ridge+{a}knn"] = pred + a * corr
            preds[f"ridge+{a}knnU"] = pred + a * corr_u
        for method, p in preds.items():
            per_fold.setdefault(method, []).append(cv_tune.fold_scores(p, fold, METRICS))
    cv_tune.emit(cv_tune.paired_to(per_fold, layout[0].shots, METRICS), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
