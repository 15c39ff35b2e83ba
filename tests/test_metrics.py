"""Metrics against hand-computed values: nDCG (MeLU), precision and nDCG (RecBole), mae, rmse."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec.evaluation.metrics import (metric_names, ndcg_at_k, precision_at_k, recbole_ndcg_at_k,
                                        top_true)
from metarec.evaluation.scoring import evaluate_predictions

L2_3 = math.log2(3)


def test_ndcg_hand_computed():
    # One task, ratings 5,4,3,1; the prediction ranks them in reverse.
    pred = np.array([[0.0, 1.0, 2.0, 3.0]])
    true = np.array([[5.0, 4.0, 3.0, 1.0]])
    mask = np.ones((1, 4))
    # gains 31, 15, 7, 1; ranked 1, 7, 15 at ranks 1..3 -> 1 + 7/log2(3) + 15/2
    dcg = 1 + 7 / L2_3 + 15 / 2
    idcg = 31 + 15 / L2_3 + 7 / 2
    assert ndcg_at_k(pred, true, mask, 3)[0] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(-pred, true, mask, 3)[0] == pytest.approx(1.0)
    assert ndcg_at_k(pred, true, mask, 1)[0] == pytest.approx(1 / 31)


def test_ndcg_respects_mask_and_short_queries():
    # Slot 2 is padding with a huge score; only two real items, k=5 -> cut-off 2.
    pred = np.array([[1.0, 2.0, 99.0]])
    true = np.array([[2.0, 3.0, 5.0]])
    mask = np.array([[1, 1, 0]])
    assert ndcg_at_k(pred, true, mask, 5)[0] == pytest.approx(1.0)
    swapped = ndcg_at_k(-pred, true, mask, 5)[0]
    assert swapped == pytest.approx((3 + 7 / L2_3) / (7 + 3 / L2_3))


def test_ties_are_scored_as_expected_value():
    # A constant prediction: nDCG@1 = mean gain / best gain = (31+15+7+1)/4/31.
    true = np.array([[5.0, 4.0, 3.0, 1.0]])
    got = ndcg_at_k(np.zeros((1, 4)), true, np.ones((1, 4)), 1)[0]
    assert got == pytest.approx(13.5 / 31)
    # precision@2 of a constant prediction: each item has probability 1/2 of the top 2.
    assert precision_at_k(np.zeros((1, 4)), true, np.ones((1, 4)), 2)[0] == pytest.approx(0.5)


def test_recbole_precision_and_ndcg():
    true = np.array([[5.0, 1.0, 4.0, 2.0, 3.0, 1.0]])
    mask = np.ones_like(true)
    # Relevant (top 2 by rating): slots 0 and 2. Predicted top 2: slots 0 and 1.
    pred = np.array([[9.0, 8.0, 1.0, 0.0, 0.5, 0.2]])
    assert precision_at_k(pred, true, mask, 2)[0] == pytest.approx(0.5)
    assert recbole_ndcg_at_k(pred, true, mask, 2)[0] == pytest.approx(1 / (1 + 1 / L2_3))
    # Ties in the true ratings: the earlier slot is relevant.
    rel = top_true(np.array([[4.0, 5.0, 4.0]]), np.ones((1, 3)), 2)
    assert rel.tolist() == [[True, True, False]]


def test_mae_rmse_pooled_over_ratings():
    pred = np.array([[3.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    true = np.array([[4.0, 1.0, 5.0], [1.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    res = evaluate_predictions(pred, true, mask, names=["mae", "rmse"])
    assert res.metrics["mae"] == pytest.approx((1 + 2 + 0) / 3)
    assert res.metrics["rmse"] == pytest.approx(math.sqrt((1 + 4 + 0) / 3))
    assert (res.n_tasks, res.n_ratings) == (2, 3)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="must be equal"):
        evaluate_predictions(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 4)), names=["mae"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_predictions(np.full((1, 2), np.nan), np.ones((1, 2)), np.ones((1, 2)),
                             names=["mae"])
    with pytest.raises(ValueError, match="unknown metric family"):
        metric_names(("auc",), (1,))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 10_000))
def test_ranking_metrics_bounded_and_perfect_is_one(k, seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(1, 6, (4, 7)).astype(float)
    mask = rng.random((4, 7)) < 0.8
    mask[:, 0] = True
    pred = rng.normal(size=(4, 7))
    for fn in (ndcg_at_k, precision_at_k, recbole_ndcg_at_k):
        vals = fn(pred, true, mask, k)
        assert np.all((vals >= -1e-12) & (vals <= 1 + 1e-12))
    assert np.allclose(ndcg_at_k(true, true, mask, k), 1.0)
    # Ranking by the true ratings minus a tiny slot index reproduces top_true's tie-break.
    exact = true - 1e-6 * np.arange(7)
    assert np.allclose(precision_at_k(exact, true, mask, k), 1.0)
