"""Metrics against hand-computed values, bootstrap intervals, curves and the written report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec import evaluate as ev
from metarec.config import EvaluationConfig
from metarec.data.arrays import TaskArrays

L2_3 = math.log2(3)


def test_ndcg_hand_computed():
    # One task, ratings 5,4,3,1; the prediction ranks them in reverse.
    pred = np.array([[0.0, 1.0, 2.0, 3.0]])
    true = np.array([[5.0, 4.0, 3.0, 1.0]])
    mask = np.ones((1, 4))
    # gains 31, 15, 7, 1; ranked 1, 7, 15 at ranks 1..3 -> 1 + 7/log2(3) + 15/2
    dcg = 1 + 7 / L2_3 + 15 / 2
    idcg = 31 + 15 / L2_3 + 7 / 2
    assert ev.ndcg_at_k(pred, true, mask, 3)[0] == pytest.approx(dcg / idcg)
    assert ev.ndcg_at_k(-pred, true, mask, 3)[0] == pytest.approx(1.0)
    assert ev.ndcg_at_k(pred, true, mask, 1)[0] == pytest.approx(1 / 31)


def test_ndcg_respects_mask_and_short_queries():
    # Slot 2 is padding with a huge score; only two real items, k=5 -> cut-off 2.
    pred = np.array([[1.0, 2.0, 99.0]])
    true = np.array([[2.0, 3.0, 5.0]])
    mask = np.array([[1, 1, 0]])
    assert ev.ndcg_at_k(pred, true, mask, 5)[0] == pytest.approx(1.0)
    swapped = ev.ndcg_at_k(-pred, true, mask, 5)[0]
    assert swapped == pytest.approx((3 + 7 / L2_3) / (7 + 3 / L2_3))


def test_ties_are_scored_as_expected_value():
    # A constant prediction: nDCG@1 = mean gain / best gain = (31+15+7+1)/4/31.
    true = np.array([[5.0, 4.0, 3.0, 1.0]])
    got = ev.ndcg_at_k(np.zeros((1, 4)), true, np.ones((1, 4)), 1)[0]
    assert got == pytest.approx(13.5 / 31)
    # precision@2 of a constant prediction: each item has probability 1/2 of the top 2.
    assert ev.precision_at_k(np.zeros((1, 4)), true, np.ones((1, 4)), 2)[0] == pytest.approx(0.5)


def test_recbole_precision_and_ndcg():
    true = np.array([[5.0, 1.0, 4.0, 2.0, 3.0, 1.0]])
    mask = np.ones_like(true)
    # Relevant (top 2 by rating): slots 0 and 2. Predicted top 2: slots 0 and 1.
    pred = np.array([[9.0, 8.0, 1.0, 0.0, 0.5, 0.2]])
    assert ev.precision_at_k(pred, true, mask, 2)[0] == pytest.approx(0.5)
    assert ev.recbole_ndcg_at_k(pred, true, mask, 2)[0] == pytest.approx(1 / (1 + 1 / L2_3))
    # Ties in the true ratings: the earlier slot is relevant.
    rel = ev.top_true(np.array([[4.0, 5.0, 4.0]]), np.ones((1, 3)), 2)
    assert rel.tolist() == [[True, True, False]]


def test_mae_rmse_pooled_over_ratings():
    pred = np.array([[3.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    true = np.array([[4.0, 1.0, 5.0], [1.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    res = ev.evaluate_predictions(pred, true, mask, names=["mae", "rmse"])
    assert res.metrics["mae"] == pytest.approx((1 + 2 + 0) / 3)
    assert res.metrics["rmse"] == pytest.approx(math.sqrt((1 + 4 + 0) / 3))
    assert (res.n_tasks, res.n_ratings) == (2, 3)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="must be equal"):
        ev.evaluate_predictions(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 4)), names=["mae"])
    with pytest.raises(ValueError, match="NaN"):
        ev.evaluate_predictions(np.full((1, 2), np.nan), np.ones((1, 2)), np.ones((1, 2)),
                                names=["mae"])
    with pytest.raises(ValueError, match="unknown metric family"):
        ev.metric_names(("auc",), (1,))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 10_000))
def test_ranking_metrics_bounded_and_perfect_is_one(k, seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(1, 6, (4, 7)).astype(float)
    mask = rng.random((4, 7)) < 0.8
    mask[:, 0] = True
    pred = rng.normal(size=(4, 7))
    for fn in (ev.ndcg_at_k, ev.precision_at_k, ev.recbole_ndcg_at_k):
        vals = fn(pred, true, mask, k)
        assert np.all((vals >= -1e-12) & (vals <= 1 + 1e-12))
    assert np.allclose(ev.ndcg_at_k(true, true, mask, k), 1.0)
    # Ranking by the true ratings minus a tiny slot index reproduces top_true's tie-break.
    exact = true - 1e-6 * np.arange(7)
    assert np.allclose(ev.precision_at_k(exact, true, mask, k), 1.0)


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 6, (60, 5)).astype(float)
    pred = true + rng.normal(0, 0.8, true.shape)
    mask = np.ones_like(true)
    names = ["mae", "ndcg_at_3"]
    a = ev.evaluate_predictions(pred, true, mask, names=names, bootstrap_samples=200, seed=3)
    b = ev.evaluate_predictions(pred, true, mask, names=names, bootstrap_samples=200, seed=3)
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
    one = ev.limit_support(tasks, 1, seed=0)
    assert one.support_mask.sum(1).tolist() == [1] * 6
    assert tasks.support_mask.sum() == 24  # the input is untouched
    assert ev.limit_support(tasks, 0, seed=0).support_mask.sum() == 0

    def support_mean(t: TaskArrays) -> np.ndarray:  # a user-mean predictor, 3.0 without support
        m = t.support_mask
        mean = np.where(m.sum(1) > 0, (t.support_ratings * m).sum(1) / np.maximum(m.sum(1), 1), 3)
        return np.repeat(mean[:, None], t.query_items.shape[1], 1)

    curve = ev.adaptation_curve(support_mean, tasks, (0, 1, 3), ["mae"], seed=0)
    assert list(curve) == ["0", "1", "3", "all"]
    zero = np.abs(3.0 - tasks.query_ratings).mean()
    assert curve["0"]["mae"] == pytest.approx(zero)


def test_report_roundtrip_markdown_and_files(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.integers(1, 6, (20, 5)).astype(float)
    mask = np.ones_like(true)
    names = ev.metric_names(("mae", "ndcg"), (3,))
    results = {sc: {m: ev.evaluate_predictions(true + rng.normal(0, s, true.shape), true, mask,
                                               names=names, bootstrap_samples=50, seed=0)
                    for m, s in (("melu", 0.5), ("item_mean", 1.0))}
               for sc in ("warm", "user_cold")}
    curves = {"warm": {"melu": {"0": {"mae": 1.0, "ndcg_at_3": 0.8},
                                "all": {"mae": 0.8, "ndcg_at_3": 0.9}}}}
    report = ev.build_report(results, "melu", curves)
    again = ev.Report.from_dict(json.loads(report.to_json()))
    assert again == report
    md = report.to_markdown()
    assert "| **melu** |" in md and "## user_cold (20 tasks)" in md
    paths = ev.write_report(report, tmp_path / "evaluation", ("mae", "ndcg_at_3"))
    assert sorted(paths) == ["adaptation_mae.png", "adaptation_ndcg_at_3.png", "report.json",
                             "report.md", "scenarios_mae.png", "scenarios_ndcg_at_3.png"]
    for path in paths.values():
        assert path.stat().st_size > 0
    assert paths["scenarios_mae.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no result for the candidate"):
        ev.build_report(results, "maml")


def test_evaluate_all_scores_every_method_and_scenario():
    tasks = {"warm": _tasks(seed=1), "user_cold": _tasks(seed=2)}

    def oracle(t: TaskArrays) -> np.ndarray:
        return t.query_ratings.astype(float)

    def constant(t: TaskArrays) -> np.ndarray:
        return np.full(t.query_ratings.shape, 3.0)

    cfg = EvaluationConfig(metrics=("mae", "ndcg"), ks=(3,), curve_shots=(0, 1),
                              bootstrap_samples=20)
    report = ev.evaluate_all({"oracle": oracle, "item_mean": constant}, tasks, "oracle", cfg, 0)
    assert report.metrics["warm"]["oracle"] == {"mae": 0.0, "ndcg_at_3": 1.0}
    assert report.metrics["user_cold"]["item_mean"]["mae"] > 0
    assert list(report.curves["warm"]["oracle"]) == ["0", "1", "all"]
    assert report.flat() == {"warm/mae": 0.0, "warm/ndcg_at_3": 1.0,
                             "user_cold/mae": 0.0, "user_cold/ndcg_at_3": 1.0}
    assert report.counts["warm"]["oracle"] == {"n_tasks": 6, "n_ratings": 18}
