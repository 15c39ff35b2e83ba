"""Scoring: bootstrap intervals, support limits, adaptation curves, every method and scenario."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.config import EvaluationConfig
from metarec.data.arrays import TaskArrays
from metarec.evaluation.scoring import (adaptation_curve, evaluate_all, evaluate_predictions,
                                        limit_support)


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 6, (60, 5)).astype(float)
    pred = true + rng.normal(0, 0.8, true.shape)
    mask = np.ones_like(true)
    names = ["mae", "ndcg_at_3"]
    a = evaluate_predictions(pred, true, mask, names=names, bootstrap_samples=200, seed=3)
    b = evaluate_predictions(pred, true, mask, names=names, bootstrap_samples=200, seed=3)
    assert a.intervals == b.intervals
    for name in names:
        lo, hi = a.intervals[name]
        assert lo < a.metrics[name] < hi


def _tasks(n=6, s=4, q=3, seed=0) -> TaskArrays:
    rng = np.random.default_rng(seed)
    return TaskArrays(user_ids=np.arange(n), user_row=np.arange(n),
                      support_items=rng.integers(0, 5, (n, s)),
                      support_ratings=rng.integers(1, 6, (n, s)).astype(np.float32),
                      support_mask=np.ones((n, s), bool),
                      query_items=rng.integers(0, 5, (n, q)),
                      query_ratings=rng.integers(1, 6, (n, q)).astype(np.float32),
                      query_mask=np.ones((n, q), bool))


def test_limit_support_and_curve():
    tasks = _tasks()
    one = limit_support(tasks, 1, seed=0)
    assert one.support_mask.sum(1).tolist() == [1] * 6
    assert tasks.support_mask.sum() == 24  # the input is untouched
    assert limit_support(tasks, 0, seed=0).support_mask.sum() == 0

    def support_mean(t: TaskArrays) -> np.ndarray:  # a user-mean predictor, 3.0 without support
        m = t.support_mask
        mean = np.where(m.sum(1) > 0, (t.support_ratings * m).sum(1) / np.maximum(m.sum(1), 1), 3)
        return np.repeat(mean[:, None], t.query_items.shape[1], 1)

    curve = adaptation_curve(support_mean, tasks, (0, 1, 3), ["mae"], seed=0)
    assert list(curve) == ["0", "1", "3", "all"]
    zero = np.abs(3.0 - tasks.query_ratings).mean()
    assert curve["0"]["mae"] == pytest.approx(zero)


def test_evaluate_all_scores_every_method_and_scenario():
    tasks = {"warm": _tasks(seed=1), "user_cold": _tasks(seed=2)}

    def oracle(t: TaskArrays) -> np.ndarray:
        return t.query_ratings.astype(float)

    def constant(t: TaskArrays) -> np.ndarray:
        return np.full(t.query_ratings.shape, 3.0)

    cfg = EvaluationConfig(metrics=("mae", "ndcg"), ks=(3,), curve_shots=(0, 1),
                              bootstrap_samples=20)
    report = evaluate_all({"oracle": oracle, "item_mean": constant}, tasks, "oracle", cfg, 0)
    assert report.metrics["warm"]["oracle"] == {"mae": 0.0, "ndcg_at_3": 1.0}
    assert report.metrics["user_cold"]["item_mean"]["mae"] > 0
    assert list(report.curves["warm"]["oracle"]) == ["0", "1", "all"]
    assert report.flat() == {"warm/mae": 0.0, "warm/ndcg_at_3": 1.0,
                             "user_cold/mae": 0.0, "user_cold/ndcg_at_3": 1.0}
    assert report.counts["warm"]["oracle"] == {"n_tasks": 6, "n_ratings": 18}


def _shifted(delta: float):
    """A predictor off by ``delta`` on every query rating (mae = |delta| on every task)."""
    def predict(t: TaskArrays) -> np.ndarray:
        return t.query_ratings.astype(float) + delta
    return predict


def _ranked(t: TaskArrays) -> np.ndarray:
    return t.query_ratings.astype(float)


def _flat(t: TaskArrays) -> np.ndarray:
    return np.full(t.query_ratings.shape, 3.0)


@pytest.mark.parametrize("cand, base, metric, diff, side", [
    (_shifted(0.5), _shifted(0.5), "mae", 0.0, "zero"),       # identical: 0, zero width
    (_shifted(0.2), _shifted(0.7), "mae", -0.5, "better"),    # better on every task
    (_shifted(0.7), _shifted(0.2), "mae", 0.5, "worse"),
    (_ranked, _flat, "mae", None, "better"),                   # oracle vs a constant
])
def test_paired_curve_differences(cand, base, metric, diff, side):
    tasks = {"test": _tasks(n=12, seed=4)}
    cfg = EvaluationConfig(metrics=("mae",), ks=(3,), curve_shots=(0, 1),
                           curve_metrics=("mae", "ndcg_at_3"), bootstrap_samples=50)
    report = evaluate_all({"melu": cand, "item_mean": base}, tasks, "melu", cfg, seed=0)
    assert list(report.curve_differences["test"]) == ["item_mean"]  # every non-candidate
    for k in ("0", "1", "all"):
        d = report.curve_differences["test"]["item_mean"][k][metric]
        curve = report.curves["test"]
        assert d.diff == pytest.approx(curve["melu"][k][metric] - curve["item_mean"][k][metric])
        if diff is not None:
            assert d.diff == pytest.approx(diff)
        lo, hi = d.interval
        if side == "zero":
            assert lo == hi == 0.0 and not d.excludes_zero()
        else:
            assert d.excludes_zero() and (hi < 0 if side == "better" else lo > 0)
    assert report.curve_metrics == ("mae", "ndcg_at_3") and report.bootstrap_samples == 50


def test_paired_resamples_are_seeded_and_shared():
    """The interval of a difference uses one draw of task indices for both methods: recomputed
    by hand from resample_indices, it matches; another seed gives another interval."""
    from metarec.evaluation.metrics import task_scores
    from metarec.evaluation.scoring import paired_differences, resample_indices

    rng = np.random.default_rng(5)
    true = rng.integers(1, 6, (30, 4)).astype(float)
    mask = np.ones_like(true)
    a = task_scores(true + rng.normal(0, 0.5, true.shape), true, mask, ["mae"])
    b = task_scores(true + rng.normal(0, 0.6, true.shape), true, mask, ["mae"])
    idx = resample_indices(30, 200, seed=9)
    d = paired_differences(a, b, ["mae"], idx, 0.9)["mae"]
    by_hand = (a.abs_err[idx].sum(1) / a.count[idx].sum(1)
               - b.abs_err[idx].sum(1) / b.count[idx].sum(1))
    assert d.interval == pytest.approx((np.quantile(by_hand, 0.05), np.quantile(by_hand, 0.95)))
    assert d == paired_differences(a, b, ["mae"], resample_indices(30, 200, seed=9), 0.9)["mae"]
    assert d != paired_differences(a, b, ["mae"], resample_indices(30, 200, seed=8), 0.9)["mae"]
    assert paired_differences(a, b, ["mae"], resample_indices(30, 0, 9), 0.9)["mae"].interval \
        is None
