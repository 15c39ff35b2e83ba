"""Rating and ranking metrics of few-shot query sets, per task (pure numpy, hand-checkable).

All metrics are pure numpy functions of three (N, Q) arrays: predicted scores, true ratings and
the query mask (1 where a query slot holds a real rating). N is the number of tasks (users),
Q the padded query size. Definitions:

- ``mae``, ``rmse``: pooled over every real query rating (rating units);
- ``ndcg_at_k`` (MeLU, KDD 2019): within each task's query set, gain ``2^rating - 1`` and
  discount ``log2(1 + rank)`` (rank 1 first), normalised by the ideal ordering; averaged over tasks;
- ``precision_at_k`` and ``recbole_ndcg_at_k`` (RecBole-MetaRec benchmark): the relevant items
  are the k query items with the highest true rating (ties broken by query slot, first wins);
  precision is the share of the predicted top k that is relevant, nDCG uses binary gains.

With fewer than k real query items, the cut-off is the number of real items. Tied predictions
are scored tie-aware (McSherry & Najork, 2008): the expected value over every order of a tie,
so a constant predictor gets the score of a random ranking rather than of the slot order.
A task whose ideal DCG is 0 (every gain 0) has no nDCG and is left out of the mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LOWER_IS_BETTER = frozenset({"mae", "rmse"})
RANKING_FAMILIES = ("ndcg", "precision", "recbole_ndcg")
_RANKED = re.compile(r"^(ndcg|precision|recbole_ndcg)_at_(\d+)$")


def lower_is_better(metric: str) -> bool:
    """True for error metrics (mae, rmse), False for ranking metrics."""
    return metric in LOWER_IS_BETTER


def metric_names(families: tuple[str, ...], ks: tuple[int, ...]) -> list[str]:
    """Expand metric families over the cut-offs: ("mae", "ndcg"), (1, 3) -> mae, ndcg_at_1, ..."""
    names: list[str] = []
    for fam in families:
        if fam in LOWER_IS_BETTER:
            names.append(fam)
        elif fam in RANKING_FAMILIES:
            if not ks or any(k < 1 for k in ks):
                raise ValueError(f"evaluation.ks must be positive integers, got {ks}")
            names.extend(f"{fam}_at_{k}" for k in ks)
        else:
            raise ValueError(f"unknown metric family {fam!r}; known: "
                             f"{sorted(LOWER_IS_BETTER) + list(RANKING_FAMILIES)}")
    return names


# --------------------------------------------------------------------------- per-task metrics


def _check(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    mask = np.asarray(mask).astype(bool)
    if pred.ndim != 2 or pred.shape != true.shape or pred.shape != mask.shape:
        raise ValueError(f"predictions {pred.shape}, ratings {true.shape} and mask {mask.shape} "
                         "must be equal (N, Q) arrays")
    if not np.isfinite(pred[mask]).all():
        raise ValueError(f"{int((~np.isfinite(pred[mask])).sum())} predictions of real query "
                         "ratings are NaN or infinite")
    if not np.isfinite(true[mask]).all():
        raise ValueError("true ratings of real query slots contain NaN or infinite values")
    return pred, true, mask


def _expected_weight(pred: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, Q): expected position weight of each real item, ties spread evenly over their slots.

    ``weights`` (N, Q) is each task's weight of rank positions 1..Q (0 beyond its cut-off). An
    item tied with others occupies positions [above, above + tied) with equal probability.
    """
    p = np.where(mask, pred, -np.inf)
    greater = (p[:, None, :] > p[:, :, None]) & mask[:, None, :]  # [n, i, j]: j ranks above i
    equal = (p[:, None, :] == p[:, :, None]) & mask[:, None, :]
    above = greater.sum(2)
    tied = equal.sum(2)
    cum = np.concatenate([np.zeros((len(p), 1)), np.cumsum(weights, axis=1)], axis=1)
    total = np.take_along_axis(cum, above + tied, 1) - np.take_along_axis(cum, above, 1)
    return np.where(mask, total / np.maximum(tied, 1), 0.0)


def _discounts(q: int, k: np.ndarray) -> np.ndarray:
    """(N, Q) position discounts 1/log2(1 + rank), zero at ranks beyond each task's cut-off."""
    ranks = np.arange(1, q + 1)
    return np.where(ranks[None, :] <= k[:, None], 1.0 / np.log2(1.0 + ranks), 0.0)


def ndcg_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) MeLU nDCG@k per task (gain 2^r - 1); NaN where the ideal DCG is 0."""
    pred, true, mask = _check(pred, true, mask)
    cut = np.minimum(k, mask.sum(1))
    disc = _discounts(pred.shape[1], cut)
    gains = np.where(mask, np.power(2.0, true) - 1.0, 0.0)
    dcg = (_expected_weight(pred, mask, disc) * gains).sum(1)
    ideal = (-np.sort(-gains, axis=1) * disc).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


def top_true(true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N, Q) bool: the k best-rated real query items of each task (ties: earlier slot wins)."""
    _, true, mask = _check(np.zeros_like(true, dtype=np.float64), true, mask)
    order = np.argsort(np.where(mask, -true, np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(true.shape[1])[None, :].repeat(len(true), 0), 1)
    return (ranks < k) & mask


def precision_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) RecBole-MetaRec precision@k: relevant share of the predicted top min(k, n) items."""
    pred, true, mask = _check(pred, true, mask)
    rel = top_true(true, mask, k)
    cut = np.minimum(k, mask.sum(1))
    inside = (np.arange(pred.shape[1])[None, :] < cut[:, None]).astype(np.float64)
    hits = (_expected_weight(pred, mask, inside) * rel).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cut > 0, hits / np.maximum(cut, 1), np.nan)


def recbole_ndcg_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) RecBole-MetaRec nDCG@k: binary gains on the k best-rated query items."""
    pred, true, mask = _check(pred, true, mask)
    rel = top_true(true, mask, k).astype(np.float64)
    return ndcg_at_k(pred, np.log2(1.0 + rel), mask, k)  # 2^log2(1+rel) - 1 == rel


# --------------------------------------------------------------------------- per-task statistics


@dataclass(frozen=True)
class TaskScores:
    """Per-task sufficient statistics: pooled errors and per-task ranking metrics, all (N,)."""

    abs_err: np.ndarray
    sq_err: np.ndarray
    count: np.ndarray
    ranking: dict[str, np.ndarray]

    def aggregate(self, names: list[str], idx: np.ndarray | None = None) -> dict[str, float]:
        """Metric values over the tasks at ``idx`` (all tasks when None)."""
        sel = np.arange(len(self.count)) if idx is None else np.asarray(idx)
        return {name: float(v[0]) for name, v in self.resampled(names, sel[None, :]).items()}

    def resampled(self, names: list[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        """(B,) values of each metric over B task selections ``idx`` (B, n) of task indices.

        mae/rmse pool the ratings of the selected tasks; ranking metrics average the selected
        tasks that have a value (NaN when none has). A task drawn twice counts twice.
        """
        n = self.count[idx].sum(1)
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            for name in names:
                if name == "mae":
                    out[name] = np.where(n > 0, self.abs_err[idx].sum(1) / n, np.nan)
                elif name == "rmse":
                    out[name] = np.where(n > 0, np.sqrt(self.sq_err[idx].sum(1) / n), np.nan)
                else:
                    vals = self.ranking[name][idx]
                    seen = np.isfinite(vals)
                    out[name] = np.where(seen.any(1), np.where(seen, vals, 0.0).sum(1)
                                         / seen.sum(1), np.nan)
        return out


def task_scores(pred: np.ndarray, true: np.ndarray, mask: np.ndarray,
                names: list[str]) -> TaskScores:
    """Per-task statistics of ``names`` for (N, Q) predictions, ratings and mask."""
    pred, true, mask = _check(pred, true, mask)
    err = np.where(mask, pred - true, 0.0)
    ranking: dict[str, np.ndarray] = {}
    funcs = {"ndcg": ndcg_at_k, "precision": precision_at_k, "recbole_ndcg": recbole_ndcg_at_k}
    for name in names:
        m = _RANKED.match(name)
        if m:
            ranking[name] = funcs[m.group(1)](pred, true, mask, int(m.group(2)))
        elif name not in LOWER_IS_BETTER:
            raise ValueError(f"unknown metric {name!r}")
    return TaskScores(np.abs(err).sum(1), (err ** 2).sum(1), mask.sum(1).astype(np.float64),
                      ranking)
