"""Catalog scoring on small exports of every learner: the numpy scan equals ``score.onnx``
(and PyTorch), chunking and exclusions never change the top k, and the candidate stage probing
every list is the exact scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.adaptation.kinds import adapted_scores
from metarec.catalog.artifact import read_catalog
from metarec.catalog.candidates import build_index
from metarec.catalog.scoring import CatalogGraphs
from metarec.config import ModelConfig
from metarec.export import export_onnx
from metarec.meta.learners import REGISTRY
from metarec.models.estimator import build_model
from metarec.serve import Recommender
from tests.test_export import _trained_looking
from tests.test_models import plain_meta, tiny_features


def _graphs(model, features, adaptation, out: Path):
    export_onnx(model, adaptation, features, out)
    meta = json.loads((out / "metadata.json").read_text())
    return CatalogGraphs(out, meta["catalog"]), read_catalog(out / "catalog")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_numpy_scan_equals_the_score_graph_and_pytorch(name: str, tmp_path: Path) -> None:
    model, features, learner = _trained_looking(name, "decision")
    adaptation = learner.adaptation()
    graphs, catalog = _graphs(model, features, adaptation, tmp_path / "e")
    rows = np.array([3, 7, 11, 20])
    ratings = np.array([5.0, 1.0, 4.0, 2.0], np.float32)
    user = model.user_table[2].numpy()
    state = graphs.adapt(catalog, user, rows, ratings)
    everything = np.arange(len(catalog))
    onnx_scores = graphs.score(catalog, state, everything)
    numpy_scores = graphs.scan_scores(catalog, state, slice(None))
    np.testing.assert_allclose(numpy_scores, onnx_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(graphs.scan_scores(catalog, state, everything[::-3]),
                               onnx_scores[::-3], rtol=0, atol=1e-5)
    want = adapted_scores(model, adaptation, torch.as_tensor(user), torch.as_tensor(rows),
                          torch.as_tensor(ratings), torch.ones(4), torch.arange(len(catalog)))
    np.testing.assert_allclose(numpy_scores, want.numpy(), rtol=0, atol=1e-5)


def test_ridge_head_factors_scan(tmp_path: Path) -> None:
    """A ridge head over item factors: the head features travel in the catalog."""
    from metarec.meta.learners import build_learner

    torch.manual_seed(7)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_offset=True, item_factors=3,
                                              head_factors=True, tower_factors=False)).eval()
    gen = torch.Generator().manual_seed(4)
    model.fit_item_stats(torch.randint(0, 20, (300,), generator=gen),
                         torch.randint(1, 6, (300,), generator=gen).float(), 2.0,
                         user_index=torch.arange(300) % 9)
    adaptation = build_learner(model, plain_meta(learner="ridge", ridge_lambda=0.5)).adaptation()
    graphs, catalog = _graphs(model, features, adaptation, tmp_path / "e")
    assert catalog.head.shape == (30, 3) and np.abs(catalog.head[:20]).sum() > 0
    rows, ratings = np.array([1, 4, 9]), np.array([5.0, 2.0, 4.0], np.float32)
    state = graphs.adapt(catalog, model.user_table[0].numpy(), rows, ratings)
    want = adapted_scores(model, adaptation, model.user_table[0], torch.as_tensor(rows),
                          torch.as_tensor(ratings), torch.ones(3), torch.arange(30)).numpy()
    np.testing.assert_allclose(graphs.scan_scores(catalog, state, slice(None)), want,
                               rtol=0, atol=1e-5)


def test_top_k_chunks_exclusions_and_the_candidate_stage(tmp_path: Path) -> None:
    model, features, learner = _trained_looking("ridge", "decision")
    graphs, catalog = _graphs(model, features, learner.adaptation(), tmp_path / "e")
    state = graphs.adapt(catalog, model.user_table[1].numpy(), np.array([2, 5]),
                         np.array([5.0, 1.0], np.float32))
    full = graphs.scan_scores(catalog, state, slice(None))
    full[[2, 5]] = -np.inf
    order = np.lexsort((np.arange(len(full)), -full))
    for chunk in (1, 4, 7, 1000):
        top = graphs.top_k(catalog, state, 6, np.array([5, 2]), chunk)
        np.testing.assert_array_equal(top.rows, order[:6])
    index = build_index(catalog, 5)
    assert index.lists == 5 and sorted(index.order.tolist()) == list(range(len(catalog)))
    every = index.candidates(graphs, catalog, state, probe=5, n=6, exclude=np.array([2, 5]))
    np.testing.assert_array_equal(every.rows, order[:6])
    some = index.candidates(graphs, catalog, state, probe=1, n=6)
    assert some.scored < len(catalog) + 5 and len(some.rows) <= 6
    with pytest.raises(ValueError, match="lists must be in 1..30"):
        build_index(catalog, 31)


def test_recommender_with_a_candidate_stage(tmp_path: Path) -> None:
    model, features, learner = _trained_looking("ridge", "decision")
    out = tmp_path / "e"
    export_onnx(model, learner.adaptation(), features, out)
    exact = Recommender(out)
    staged = Recommender(out, candidate_lists=4, candidate_probe=4)  # every list: exact
    assert staged.index is not None and exact.index is None
    ratings = {1002: 5, 1009: 1}
    assert [i.item_id for i in staged.recommend(None, ratings, k=5)] == \
        [i.item_id for i in exact.recommend(None, ratings, k=5)]
