"""The estimator: shapes, the embed/decide split, bag pooling parity, input checks.

Also home of the tiny random FeatureArrays/TaskArrays builders used by test_meta/test_train.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from metarec.config import MetaConfig, ModelConfig
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.models.estimator import build_model

# MeLU's own estimator: no item statistics, residual offset or LayerNorm, PyTorch's embedding
# initialisation (params.yaml's defaults add those; the tests that need them say so).
PLAIN = dict(item_stats=False, item_offset=False, item_norm=False, embedding_std=1.0,
             item_factors=0, head_factors=False)
TINY = ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4, **PLAIN)


def plain_meta(**overrides) -> MetaConfig:
    """MeLU's meta-learning settings (no separate output-bias rate, no ranking loss) unless
    ``overrides`` say otherwise: what the learner tests were written against."""
    return MetaConfig(**{"learner": "melu", "output_bias_lr": None, "rank_loss_weight": 0.0,
                         **overrides})


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
    model = build_model(tiny_features(), ModelConfig(embedding_dim=4, hidden=(8, 5), **PLAIN))
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
    model = build_model(tiny_features(), ModelConfig(embedding_dim=4, hidden=(8,), use_text=False, **PLAIN))
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


def test_item_stats_fit_by_hand_and_enter_the_item_tower() -> None:
    cfg = ModelConfig(embedding_dim=4, hidden=(8,), text_proj_dim=4, item_stats=True, item_factors=0,
                      head_factors=False, item_debias=0,  # the raw shrunk means
                      item_stats_shrinkage=1.0, item_norm=True)
    torch.manual_seed(0)
    model = build_model(tiny_features(), cfg)
    assert model.item_stats.shape == (30, 2) and not model.item_stats.any()
    before = model.item_embed(torch.arange(30)).detach()
    rows = torch.tensor([0, 0, 0, 1])
    ratings = torch.tensor([5.0, 5.0, 2.0, 4.0])  # global mean 4
    model.fit_item_stats(rows, ratings, shrinkage=1.0)
    stats = model.item_stats
    # item 0: (12 + 1 * 4) / (3 + 1) - 4 = 0; item 1: (4 + 4) / 2 - 4 = 0; log counts 3 vs 1
    assert torch.allclose(stats[0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(stats[1], torch.tensor([float(np.log(2) / np.log(4)), 0.0]), atol=1e-6)
    assert not stats[2:].any()  # never rated: unknown
    model.fit_item_stats(torch.tensor([2, 2]), torch.tensor([5.0, 5.0]), shrinkage=0.0)
    assert torch.allclose(model.item_stats[2], torch.tensor([1.0, 0.0]))  # mean == global
    model.fit_item_stats(torch.tensor([2, 3]), torch.tensor([5.0, 1.0]), shrinkage=0.0)
    assert torch.allclose(model.item_stats[2:4, 1], torch.tensor([2.0, -2.0]))
    after = model.item_embed(torch.arange(30)).detach()
    assert not torch.allclose(before[2:4], after[2:4]) and torch.allclose(before[4:], after[4:])
    # LayerNorm: every item row has zero mean and unit variance (default affine init)
    assert torch.allclose(after.mean(-1), torch.zeros(30), atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        model.fit_item_stats(torch.tensor([30]), torch.tensor([3.0]), 1.0)
    with pytest.raises(ValueError, match="no training ratings"):
        model.fit_item_stats(torch.tensor([], dtype=torch.long), torch.tensor([]), 1.0)


@pytest.mark.parametrize("source", ["all", "support"])
def test_item_stats_are_fitted_by_meta_train_and_saved_in_the_state_dict(source) -> None:
    from metarec.config import TrainConfig
    from metarec.meta.learners import GlobalLearner
    from metarec.training.loop import meta_train

    cfg = ModelConfig(embedding_dim=4, hidden=(8,), text_proj_dim=4, item_stats=True, item_factors=0,
                      head_factors=False,
                      item_stats_from=source)
    model = build_model(tiny_features(), cfg)
    tasks = tiny_tasks()
    meta_train(model, GlobalLearner(), tasks, tiny_tasks(1),
               TrainConfig(max_steps=2, eval_every=1, tasks_per_batch=4, device="cpu",
                           progress=False, checkpoint_every=0), seed=0)
    query = tasks.query_items[tasks.query_mask] if source == "all" else np.zeros(0, np.int64)
    rated = np.unique(np.concatenate([tasks.support_items[tasks.support_mask], query]))
    assert len(rated) < 30
    counts = model.item_stats[:, 0]
    assert (counts[rated] > 0).all() and int((counts > 0).sum()) == len(rated)
    assert "item_stats" in model.state_dict()


def test_embedding_std_scales_the_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), ModelConfig(embedding_dim=64, hidden=(8,),
                                                     embedding_std=0.1))
    std = float(model.user_emb[1].weight.detach().std())
    assert 0.05 < std < 0.15
    assert not model.bag_emb["genre"].weight[0].any()  # padding row stays zero
    with pytest.raises(ValueError, match="embedding_std"):
        build_model(tiny_features(), ModelConfig(embedding_std=0.0))


def test_item_ids_and_pure_svd_factors_enter_the_item_tower() -> None:
    from metarec.config import ModelConfig
    from metarec.models.fitting import pure_svd

    # PureSVD on a rank-one residual matrix: the first factor is the item pattern (unit RMS
    # over the 3 rated items), item 3 (no rating) is zero, signs are fixed, and the second
    # column (beyond the rank) is zero.
    items = torch.tensor([0, 1, 2, 0, 1, 2])
    users = torch.tensor([0, 0, 0, 1, 1, 1])
    # user 1's residuals are half of user 0's: (5, 3, 2) - 10/3 and (23, 17, 14) / 6 - 3
    ratings = torch.tensor([5.0, 3.0, 2.0, 23 / 6, 17 / 6, 14 / 6], dtype=torch.float64)
    fac = pure_svd(items, ratings, users, 4, 2)
    pattern = torch.tensor([5.0, -1.0, -4.0], dtype=torch.float64)
    torch.testing.assert_close(fac[:3, 0], pattern / pattern.norm() * 3 ** 0.5, rtol=0, atol=1e-9,
                               check_dtype=False)
    assert float(fac[3].abs().sum()) == 0.0 and float(fac[:, 1].abs().max()) < 1e-9
    features = tiny_features()
    n = features.item_cat.shape[0]
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8,), text_proj_dim=4,
                                               item_id=True, **{**PLAIN, "item_factors": 3},
                                               tower_factors=True))
    assert model.feature_dim == 4 * (1 + 1 + 1 + 1 + 1) + 4 * 2  # year, genre, text, id, svd; users
    with pytest.raises(ValueError, match="user of every rating"):
        model.fit_item_stats(items, ratings.float(), 1.0)
    before = model.item_embed(torch.arange(n)).detach()
    model.fit_item_stats(items, ratings.float(), 1.0, user_index=users)
    after = model.item_embed(torch.arange(n)).detach()
    assert torch.equal(model.item_known[:3], torch.ones(3)) and float(model.item_known[3:].sum()) == 0
    assert not torch.allclose(before[:3], after[:3])  # rated items gain id vectors and factors
    torch.testing.assert_close(before[3:], after[3:])  # unrated ones stay feature-only
    with pytest.raises(ValueError, match="item_offset needs item_stats"):
        build_model(features, ModelConfig(embedding_dim=4, hidden=(8,), item_offset=True,
                                          item_stats=False))


def test_item_debias_separates_item_quality_from_its_raters() -> None:
    """model.item_debias: an item rated only by generous raters is not taken for a good item.
    Ratings mu + b_u + b_i exactly: the sweeps recover b_i (shrinkage 0), the raw mean does not."""
    cfg = dataclasses.replace(TINY, item_stats=True, item_offset=True, item_stats_shrinkage=0.0,
                              item_debias=0)
    rng = np.random.default_rng(0)
    b_u = np.array([1.0, 0.5, -0.5, -1.0])
    b_i = rng.normal(0, 0.5, 30)
    b_i -= b_i.mean()
    # users 0, 1 (generous) rate items 0..19, users 2, 3 (harsh) items 10..29
    pairs = [(u, i) for u in (0, 1) for i in range(20)] + [(u, i) for u in (2, 3) for i in range(10, 30)]
    users = torch.tensor([u for u, _ in pairs])
    rows = torch.tensor([i for _, i in pairs])
    ratings = torch.tensor([3.0 + b_u[u] + b_i[i] for u, i in pairs], dtype=torch.float64)
    raw = build_model(tiny_features(), cfg)
    raw.fit_item_stats(rows, ratings, 0.0, user_index=users)
    debiased = build_model(tiny_features(), dataclasses.replace(cfg, item_debias=50))
    debiased.fit_item_stats(rows, ratings, 0.0, user_index=users)
    mu = float(ratings.mean())
    truth = torch.tensor(3.0 + b_i - mu, dtype=torch.float32)  # b_i relative to the global mean
    err_raw = (raw.item_stats[:, 1] - truth).abs().max()
    diff = debiased.offset(torch.arange(30)) - truth
    # one constant separates them (the split of mu between b_u and b_i): compare after centring
    centred = diff - diff.mean()
    assert err_raw > 0.4 and float(centred.abs().max()) < 0.05
    assert torch.allclose(raw.item_stats[:, 0], debiased.item_stats[:, 0])  # counts unchanged
    with pytest.raises(ValueError, match="item_debias needs the user"):
        debiased.fit_item_stats(rows, ratings, 0.0)
    with pytest.raises(ValueError, match="item_debias must be >= 0"):
        build_model(tiny_features(), dataclasses.replace(cfg, item_debias=-1))
