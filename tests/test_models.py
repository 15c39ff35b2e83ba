"""The estimator: shapes, the embed/decide split, bag pooling parity, input checks.

Also home of the tiny random FeatureArrays/TaskArrays builders used by test_meta/test_train.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metarec.config import ModelConfig
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.models.estimator import build_model

TINY = ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4)


def tiny_features(seed: int = 0, users: int = 12, items: int = 30, text_dim: int = 8,
                  bag: int = 3) -> FeatureArrays:
    """Random features: 2 user fields, 1 item field, one genre bag (0 = pad), text."""
    r = np.random.default_rng(seed)
    genre = r.integers(0, 6, (items, bag))
    genre[:, 0] = r.integers(1, 6, items)  # every item has at least one (maybe unknown) genre
    return FeatureArrays(
        user_ids=np.arange(users) + 100, item_ids=np.arange(items) + 1000,
        user_cat=np.stack([r.integers(0, 3, users), r.integers(0, 5, users)], 1),
        user_fields=("gender", "age"), user_cardinality=(3, 5),
        item_cat=r.integers(0, 4, (items, 1)), item_fields=("year",), item_cardinality=(4,),
        item_multi={"genre": genre}, item_multi_cardinality={"genre": 6},
        item_text=r.standard_normal((items, text_dim)).astype(np.float32))


def tiny_tasks(seed: int = 0, n: int = 10, support: int = 6, query: int = 4, users: int = 12,
               items: int = 30) -> TaskArrays:
    """Random padded tasks with 1..S support and 1..Q query ratings in 1..5."""
    r = np.random.default_rng(seed)
    sm = np.arange(support)[None] < r.integers(1, support + 1, n)[:, None]
    qm = np.arange(query)[None] < r.integers(1, query + 1, n)[:, None]
    return TaskArrays(
        user_ids=np.arange(n), user_row=r.integers(0, users, n),
        support_items=np.where(sm, r.integers(0, items, (n, support)), 0),
        support_ratings=np.where(sm, r.integers(1, 6, (n, support)), 0).astype(np.float32),
        support_mask=sm,
        query_items=np.where(qm, r.integers(0, items, (n, query)), 0),
        query_ratings=np.where(qm, r.integers(1, 6, (n, query)), 0).astype(np.float32),
        query_mask=qm)


def test_shapes_and_split_equals_forward() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    user_cat = model.user_table[torch.tensor([0, 3])]  # (2, Fu)
    items = torch.tensor([[1, 2, 3], [4, 5, 0]])  # (2, 3)
    x = model.embed(user_cat, items)
    # 2 user fields + 1 item field + 1 bag, each 4 wide, + text projection 4
    assert x.shape == (2, 3, 4 * 4 + 4) == (2, 3, model.feature_dim)
    scores = model(user_cat, items)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(model.decide(model.decision_params(), x), scores)


def test_decide_matches_a_plain_mlp() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), ModelConfig(embedding_dim=4, hidden=(8, 5)))
    mlp = nn.Sequential(model.decision[0], nn.ReLU(), model.decision[1], nn.ReLU(),
                        model.decision[2])
    x = torch.randn(7, model.feature_dim)
    torch.testing.assert_close(model.decide(model.decision_params(), x), mlp(x).squeeze(-1))


def test_bag_pooling_equals_embedding_bag_mean() -> None:
    torch.manual_seed(0)
    features = tiny_features()
    model = build_model(features, TINY)
    ref = nn.EmbeddingBag(6, 4, mode="mean", padding_idx=0)
    ref.weight.data.copy_(model.bag_emb["genre"].weight.data)
    bags = torch.as_tensor(features.item_multi["genre"])
    pooled = model.item_embed(torch.arange(len(bags)))[:, 4:8]  # after the 1 item field
    torch.testing.assert_close(pooled, ref(bags))


def test_user_tower_depends_on_user() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    items = torch.tensor([1, 2])
    a = model(torch.tensor([0, 0]), items)
    b = model(torch.tensor([2, 4]), items)
    assert not torch.allclose(a, b)


def test_without_text() -> None:
    model = build_model(tiny_features(), ModelConfig(embedding_dim=4, hidden=(8,), use_text=False))
    assert model.text_proj is None and model.feature_dim == 16
    features = tiny_features()
    features.item_text = None
    assert build_model(features, TINY).feature_dim == 16


def test_index_beyond_cardinality_is_rejected() -> None:
    features = tiny_features()
    features.item_cat[3, 0] = 4  # cardinality is 4: valid indices are 0..3
    with pytest.raises(ValueError, match=r"item_cat: column 0 has index 4 >= its cardinality 4"):
        build_model(features, TINY)
    features = tiny_features()
    features.item_multi["genre"][0, 1] = 9
    with pytest.raises(ValueError, match="genre"):
        build_model(features, TINY)
