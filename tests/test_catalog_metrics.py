"""Full-catalog ranking: metrics against hand-computed cases, chunked scoring equal to the dense
reference for any predict, the ranking baselines on a hand-made interaction matrix, and the
evaluation and gate on full-catalog metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from metarec.config import EvaluationConfig, TrainConfig
from metarec.data.arrays import TaskArrays
from metarec.evaluation.catalog import (catalog_metrics, catalog_task_scores, excluded_slots,
                                        full_metric_names, is_full_catalog, relevant_slots,
                                        tie_keys)
from metarec.training.ranking_baselines import ItemKNNBaseline, MostPopBaseline

ALL = full_metric_names(("recall", "hr", "ndcg", "mrr"), (1, 2, 3, 10))
L2 = 1.0 / math.log2(3.0)  # discount of rank 2
L4 = 1.0 / math.log2(5.0)


@dataclass
class ImplicitTasks(TaskArrays):
    """TaskArrays with the implicit contract's confidence weights (until metarec.data has them)."""

    support_weights: np.ndarray | None = None
    query_weights: np.ndarray | None = None


def one(scores, exclude, relevant, names=ALL, seed=0) -> dict[str, float]:
    out = catalog_metrics(np.array([scores], float), np.array([exclude], bool),
                          np.array([relevant], bool), names, seed)
    return {k: float(v[0]) for k, v in out.items()}


def test_names() -> None:
    assert full_metric_names(("recall", "mrr"), (10, 20)) == [
        "full_recall_at_10", "full_recall_at_20", "full_mrr"]
    assert is_full_catalog("full_ndcg_at_10") and is_full_catalog("full_mrr")
    assert not is_full_catalog("ndcg_at_3") and not is_full_catalog("full_mrr_at_3")
    with pytest.raises(ValueError, match="unknown full-catalog metric 'auc'"):
        full_metric_names(("auc",), (10,))
    with pytest.raises(ValueError, match="positive integers"):
        full_metric_names(("hr",), (0,))


def test_exclusion_and_every_metric_by_hand() -> None:
    # item 0 (best score) is in the support: excluded. Ranking: 1, 2*, 3, 4* (* relevant).
    m = one([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 0, 0, 0], [0, 0, 1, 0, 1])
    assert m["full_recall_at_1"] == 0 and m["full_hr_at_1"] == 0 and m["full_ndcg_at_1"] == 0
    assert m["full_recall_at_2"] == 0.5 and m["full_hr_at_2"] == 1
    assert m["full_ndcg_at_2"] == pytest.approx(L2 / (1 + L2))
    assert m["full_recall_at_3"] == 0.5
    assert m["full_ndcg_at_3"] == pytest.approx(L2 / (1 + L2))
    assert m["full_recall_at_10"] == 1 and m["full_hr_at_10"] == 1
    assert m["full_ndcg_at_10"] == pytest.approx((L2 + L4) / (1 + L2))
    assert m["full_mrr"] == 0.5
    # without the exclusion item 0 takes rank 1 and pushes the others down
    m = one([0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 0, 0, 0], [0, 0, 1, 0, 1])
    assert m["full_mrr"] == pytest.approx(1 / 3) and m["full_recall_at_2"] == 0


def test_an_excluded_item_is_not_relevant_and_no_relevant_item_is_nan() -> None:
    m = one([0.1, 0.9, 0.5], [0, 1, 0], [0, 1, 1])  # item 1 excluded: only item 2 relevant
    assert m["full_mrr"] == 1.0 and m["full_recall_at_1"] == 1.0
    out = catalog_metrics(np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]]),
                          np.zeros((2, 3), bool), np.array([[0, 0, 0], [1, 0, 0]], bool), ALL)
    for name in ALL:
        assert math.isnan(out[name][0]) and math.isfinite(out[name][1])
    assert out["full_mrr"][1] == pytest.approx(1 / 3)


def test_k_larger_than_the_catalog() -> None:
    m = one([0.9, 0.1, 0.5], [0, 0, 0], [1, 1, 0])  # ranks 1 and 3 of a 3-item catalog
    assert m["full_recall_at_10"] == 1 and m["full_hr_at_10"] == 1
    assert m["full_ndcg_at_10"] == pytest.approx((1 + 0.5) / (1 + L2))
    assert m["full_ndcg_at_2"] == pytest.approx(1 / (1 + L2))  # ideal: min(k, |R|) = 2 ones


def test_ties_are_broken_by_the_seeded_key() -> None:
    # item 1 (relevant) ties with item 2: rank 2 when its key is larger, else 3.
    for seed in range(6):
        keys = tie_keys(seed, np.zeros((1, 1), np.int64), np.array([[1, 2]]))[0]
        m = one([0.9, 0.5, 0.5], [0, 0, 0], [0, 1, 0], seed=seed)
        assert m["full_mrr"] == (0.5 if keys[0] > keys[1] else 1 / 3)
        assert m == one([0.9, 0.5, 0.5], [0, 0, 0], [0, 1, 0], seed=seed)  # deterministic
    # a constant scorer ranks at random: 1 relevant among 4 items, HR@1 ~ 1/4 over seeds
    hr = [one([1.0] * 4, [0] * 4, [0, 0, 1, 0], ["full_hr_at_1"], s)["full_hr_at_1"]
          for s in range(2000)]
    assert np.mean(hr) == pytest.approx(0.25, abs=0.03)


# --------------------------------------------------------------------------- chunked scoring


def random_tasks(n=9, s=5, q=4, items=23, seed=0, implicit=False) -> TaskArrays:
    r = np.random.default_rng(seed)
    sm = np.arange(s)[None] < r.integers(0, s + 1, n)[:, None]
    qm = np.arange(q)[None] < r.integers(0, q + 1, n)[:, None]
    labels = (r.integers(0, 2, (n, s)), r.integers(0, 2, (n, q))) if implicit else (
        r.integers(1, 6, (n, s)), r.integers(1, 6, (n, q)))
    fields = dict(user_ids=np.arange(n), user_row=np.arange(n),
                  support_items=r.integers(0, items, (n, s)),
                  support_ratings=labels[0].astype(np.float32), support_mask=sm,
                  query_items=r.integers(0, items, (n, q)),
                  query_ratings=labels[1].astype(np.float32), query_mask=qm)
    if not implicit:
        return TaskArrays(**fields)
    return ImplicitTasks(**fields, support_weights=np.ones((n, s), np.float32),
                         query_weights=np.ones((n, q), np.float32))


def table_predict(table: np.ndarray, catalog_only: bool = True):
    """predict of a fixed (users, items) score table; ``catalog_only``: fails if it sees
    query labels (catalog calls carry none)."""
    def predict(t: TaskArrays) -> np.ndarray:
        assert not (catalog_only and t.query_ratings.any())
        return table[t.user_row[:, None], t.query_items]
    return predict


def dense_reference(tasks: TaskArrays, table: np.ndarray, threshold: float, seed: int):
    n, i = len(tasks), table.shape[1]
    exclude, relevant = np.zeros((n, i), bool), np.zeros((n, i), bool)
    rows = np.arange(n)[:, None]
    ex = excluded_slots(tasks)
    exclude[np.broadcast_to(rows, ex.shape)[ex], tasks.support_items[ex]] = True
    rel = relevant_slots(tasks, threshold, i)
    relevant[np.broadcast_to(rows, rel.shape)[rel], tasks.query_items[rel]] = True
    return catalog_metrics(table[tasks.user_row], exclude, relevant, ALL, seed)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("levels", [None, 3])  # continuous scores, or 3 values: many ties
def test_chunked_scoring_equals_the_dense_reference(implicit, levels) -> None:
    tasks = random_tasks(implicit=implicit, seed=4)
    table = np.random.default_rng(1).random((9, 23))
    if levels:
        table = np.floor(table * levels)
    want = dense_reference(tasks, table, 4.0, seed=5)
    for chunk in (5, 13, 40, 10_000):  # 1 item per call ... everything at once
        got = catalog_task_scores(table_predict(table), tasks, 23, ALL, threshold=4.0,
                                  chunk=chunk, seed=5)
        for name in ALL:
            np.testing.assert_array_equal(got.ranking[name], want[name], err_msg=name)
    assert np.isnan(want["full_mrr"]).any() and np.isfinite(want["full_mrr"]).any()


def test_implicit_exclusion_and_relevance() -> None:
    t = random_tasks(n=1, s=3, q=3, implicit=True)
    t.support_items[:], t.support_ratings[:], t.support_mask[:] = [4, 5, 6], [1, 0, 1], True
    t.query_items[:], t.query_ratings[:], t.query_mask[:] = [7, 8, 7], [1, 0, 1], True
    assert excluded_slots(t).tolist() == [[True, False, True]]  # the negative stays ranked
    assert relevant_slots(t, 4.0, 23).tolist() == [[True, False, False]]  # 7 once, 8 negative


def test_bad_catalog_input_is_an_error() -> None:
    tasks = random_tasks()
    with pytest.raises(ValueError, match="outside the catalog of 5 item rows"):
        catalog_task_scores(table_predict(np.zeros((9, 23))), tasks, 5, ALL, threshold=4,
                            chunk=100)
    with pytest.raises(ValueError, match="must exceed the query width"):
        catalog_task_scores(table_predict(np.zeros((9, 23))), tasks, 23, ALL, threshold=4,
                            chunk=4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        catalog_task_scores(table_predict(np.full((9, 23), np.nan)), tasks, 23, ALL,
                            threshold=4, chunk=100)


def test_no_learner_reads_the_query_labels() -> None:
    """Catalog scoring calls predict with labels 0: every learner must score the same."""
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model
    from metarec.training.loop import predict
    from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks

    tasks = tiny_tasks(3, n=5)
    blank = TaskArrays(**{**tasks.__dict__, "query_ratings": np.zeros_like(tasks.query_ratings),
                          "query_mask": np.ones_like(tasks.query_mask)})
    cfg = TrainConfig(device="cpu", progress=False, eval_batch=4)
    for name in ("melu", "maml", "metasgd", "reptile", "ridge", "global"):
        torch.manual_seed(0)
        model = build_model(tiny_features(), TINY)
        learner = build_learner(model, plain_meta(learner="melu"), name)
        np.testing.assert_array_equal(predict(model, learner, tasks, cfg),
                                      predict(model, learner, blank, cfg), err_msg=name)


# --------------------------------------------------------------------------- baselines


def hand_tasks(implicit: bool) -> TaskArrays:
    """3 training users over 4 items. Explicit ratings; implicit: rating >= 4 is a positive
    (label 1), the rest negatives (label 0)."""
    support = np.array([[0, 1], [0, 2], [1, 3]])
    query = np.array([[2], [1], [0]])
    s_r = np.array([[5, 4], [4, 2], [5, 5]], np.float32)
    q_r = np.array([[1], [5], [3]], np.float32)
    if implicit:
        s_r, q_r = (s_r >= 4).astype(np.float32), (q_r >= 4).astype(np.float32)
    fields = dict(user_ids=np.arange(3), user_row=np.arange(3), support_items=support,
                  support_ratings=s_r, support_mask=np.ones((3, 2), bool), query_items=query,
                  query_ratings=q_r, query_mask=np.ones((3, 1), bool))
    if not implicit:
        return TaskArrays(**fields)
    return ImplicitTasks(**fields, support_weights=np.ones((3, 2), np.float32),
                         query_weights=np.ones((3, 1), np.float32))


def test_most_pop_counts_training_interactions() -> None:
    # explicit: every rating; implicit: positives only (item 2's ratings 2 and 1 are not)
    explicit = MostPopBaseline.fit(hand_tasks(False), 5).counts
    assert explicit.tolist() == [3, 3, 2, 1, 0]
    assert MostPopBaseline.fit(hand_tasks(True), 5).counts.tolist() == [2, 3, 0, 1, 0]
    t = hand_tasks(False)
    assert MostPopBaseline(explicit).predict(t).tolist() == [[2], [3], [3]]


def test_item_knn_by_hand_implicit() -> None:
    # positives X (users x items): u0 {0,1}, u1 {0,1}, u2 {1,3}; columns 0 = (1,1,0),
    # 1 = (1,1,1), 2 = 0, 3 = (0,0,1). cos(0,1) = 2/sqrt(6), cos(1,3) = 1/sqrt(3), cos(0,3) = 0.
    knn = ItemKNNBaseline.fit(hand_tasks(True), 5)
    t = hand_tasks(True)
    t.support_items[:] = [[0, 3], [1, 1], [2, 4]]
    t.support_ratings[:] = [[1, 1], [1, 1], [0, 0]]  # task 2: negatives only -> popularity
    t.query_items = np.array([[1, 3, 2], [0, 3, 1], [1, 0, 4]])
    t.query_ratings = np.zeros((3, 3), np.float32)
    t.query_mask = np.ones((3, 3), bool)
    t.query_weights = np.ones((3, 3), np.float32)
    got = knn.predict(t)
    c01, c13 = 2 / math.sqrt(6), 1 / math.sqrt(3)
    np.testing.assert_allclose(got, [[c01 + c13, 0.0, 0.0],  # item 3 is not its own neighbour
                                     [c01, c13, 0.0],  # item 1 twice counts once, not itself
                                     [3, 2, 0]], atol=1e-6)


def test_item_knn_explicit_uses_every_rating() -> None:
    # ratings X, support and query: column 0 = (5, 4, 3), column 2 = (1, 2, 0)
    # (its ratings 1 and 2 count, unlike implicit); cos(0, 2) = (5 + 8) / (sqrt(50) sqrt(5))
    knn = ItemKNNBaseline.fit(hand_tasks(False), 5)
    t = hand_tasks(False)
    t.support_items[:] = [[0, 0], [0, 0], [0, 0]]
    t.support_mask[:] = [[True, False], [True, False], [False, False]]
    t.query_items = np.array([[2], [2], [2]])
    got = knn.predict(t)
    assert got[0, 0] == pytest.approx(13 / (math.sqrt(50) * math.sqrt(5)), rel=1e-6)
    assert got[2, 0] == 2  # empty support: item 2's popularity (2 ratings)


# --------------------------------------------------------------------------- evaluation and gate


def scenario_and_tables(n=30, items=40, seed=0):
    """Explicit tasks and two score tables: ``good`` puts each user's relevant query items
    (rating >= 4) on top, ``bad`` at the bottom."""
    tasks = random_tasks(n=n, s=6, q=5, items=items, seed=seed)
    tasks.query_mask[:] = True
    tasks.query_ratings[:, 0] = 5.0  # every task has a relevant item
    noise = np.random.default_rng(seed).random((n, items))
    rel = np.zeros((n, items), bool)
    r = relevant_slots(tasks, 4.0, items)
    rel[np.broadcast_to(np.arange(n)[:, None], r.shape)[r], tasks.query_items[r]] = True
    return tasks, noise + 10 * rel, noise - 10 * rel


def catalog_report(candidate_table, baseline_table, tasks, **cfg_kw):
    from metarec.evaluation.scoring import evaluate_all

    cfg = EvaluationConfig(metrics=("mae", "ndcg"), ks=(3,), curve_shots=(0, 2),
                           curve_metrics=("mae",), bootstrap_samples=200, **cfg_kw)
    return evaluate_all({"cand": table_predict(candidate_table, False),
                         "base": table_predict(baseline_table, False)}, {"user_cold": tasks}, "cand",
                        cfg, seed=0, n_items=candidate_table.shape[1])


def test_evaluate_all_scores_the_catalog_in_results_curves_and_differences() -> None:
    from metarec.evaluation.scoring import evaluate_all

    tasks, good, bad = scenario_and_tables()
    report = catalog_report(good, bad, tasks)
    names = full_metric_names(("recall", "hr", "ndcg", "mrr"), (10, 20))
    cand, base = report.metrics["user_cold"]["cand"], report.metrics["user_cold"]["base"]
    for name in names:
        assert cand[name] == 1.0 and base[name] < 0.6, name
        assert name in report.intervals["user_cold"]["cand"]
        for k in ("0", "2", "all"):
            assert name in report.curves["user_cold"]["base"][k]
            d = report.curve_differences["user_cold"]["base"][k][name]
            assert d.diff > 0 and d.interval[0] > 0
    assert "mae" in cand and "ndcg_at_3" in cand  # the query-set metrics stay
    md = report.to_markdown()
    assert "### Full catalog" in md and "full_recall_at_10" in md
    # without the catalog (older callers) or disabled: no full-catalog metric
    cfg = EvaluationConfig(metrics=("mae",), ks=(3,), curve_shots=(0,), curve_metrics=("mae",),
                           bootstrap_samples=0)
    plain = evaluate_all({"cand": table_predict(good, False)}, {"s": tasks}, "cand", cfg, 0)
    assert set(plain.metrics["s"]["cand"]) == {"mae"}
    with pytest.raises(ValueError, match=r"full-catalog metrics \['full_mrr'\] that are not "
                                         "evaluated: no catalog was given"):
        evaluate_all({"cand": table_predict(good, False)}, {"s": tasks}, "cand",
                     EvaluationConfig(curve_metrics=("mae", "full_mrr")), 0)


def test_score_only_baselines_get_no_rating_error_anywhere() -> None:
    """most_pop / item_knn scores rank but are not ratings: on explicit data the report holds
    their ranking metrics and no mae/rmse (no MAE of 132 beside the ratings' 0.8)."""
    import dataclasses

    from metarec.config import GateConfig
    from metarec.evaluation.gate import gate
    from metarec.evaluation.scoring import evaluate_all

    tasks, good, bad = scenario_and_tables()
    cfg = EvaluationConfig(metrics=("mae", "rmse", "ndcg"), ks=(3,), curve_shots=(0, 2),
                           curve_metrics=("mae", "ndcg_at_3"), bootstrap_samples=50)
    report = evaluate_all({"cand": table_predict(good, False), "base": table_predict(bad, False),
                           "pop": table_predict(bad * 100, False)}, {"s": tasks}, "cand", cfg,
                          seed=0, n_items=good.shape[1], score_only=("pop",))
    pop, base = report.metrics["s"]["pop"], report.metrics["s"]["base"]
    assert "mae" not in pop and "rmse" not in pop and "ndcg_at_3" in pop and "full_mrr" in pop
    assert "mae" in base and "rmse" in base
    for k in ("0", "2", "all"):
        assert "mae" not in report.curves["s"]["pop"][k]
        assert "ndcg_at_3" in report.curves["s"]["pop"][k]
        assert "mae" not in report.curve_differences["s"]["pop"][k]
        assert "ndcg_at_3" in report.curve_differences["s"]["pop"][k]
        assert "mae" in report.curve_differences["s"]["base"][k]
    md = report.to_markdown()
    assert "nan" not in md and "| mae | pop |" not in md and "| ndcg_at_3 | pop |" in md
    report = dataclasses.replace(report, meta_training_gain=True)
    assert gate(report, None, GateConfig(metrics=("ndcg_at_3",), baselines=("base", "pop"))).passed
    refused = gate(report, None, GateConfig(metrics=("mae",), baselines=("pop",)))
    assert not refused.passed
    assert any("mae" in r and "pop" in r for r in refused.reasons), refused.reasons


@pytest.mark.parametrize("candidate_is_good", [True, False])
def test_gate_on_full_catalog_metrics(candidate_is_good) -> None:
    import dataclasses

    from metarec.config import GateConfig
    from metarec.evaluation.gate import gate

    tasks, good, bad = scenario_and_tables(seed=1)
    report = catalog_report(*((good, bad) if candidate_is_good else (bad, good)), tasks)
    report = dataclasses.replace(report, meta_training_gain=True)
    policy = GateConfig(metrics=("full_recall_at_10", "full_ndcg_at_10", "full_mrr"),
                        baselines=("base",))
    decision = gate(report, None, policy)
    assert decision.passed is candidate_is_good
    assert len(decision.checks) == 3 * 3  # 3 metrics x support sizes 0, 2, all
    if not candidate_is_good:
        assert any("user_cold/full_recall_at_10@all vs base" in r and "worse side" in r
                   for r in decision.reasons)
