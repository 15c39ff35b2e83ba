"""Implicit feedback, data side: labels and confidences, negative samplers that never leak a
positive, implicit tasks, and the support-size rules (curves, k-shot, resplits) on them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from metarec.config import Config, ImplicitRule
from metarec.data.arrays import TaskArrays, limit_support
from metarec.data.implicit import confidence, sample_negatives, to_implicit
from metarec.data.tasks import kshot, load_tasks
from metarec.features.build import load_features, prepare_features
from metarec.meta.inner import make_batch, resplit, sample_support
from metarec.pipeline.tasks import build_task_sets
from tests.test_encoders import fake_encoder
from tests.test_splits import make_tables


def test_threshold_keeps_positives_and_confidence_weighs_them():
    tables = make_tables()
    out = to_implicit(tables, ImplicitRule(threshold=4.0))
    values = tables.interactions["rating"].to_numpy()
    assert len(out.interactions) == int((values >= 4).sum())
    assert (out.interactions["rating"] == 1.0).all()
    v = np.array([0.0, 1.0, 9.0])
    np.testing.assert_allclose(confidence(v, ImplicitRule(confidence="log", alpha=2.0, epsilon=0.5)),
                               1 + 2 * np.log1p(v / 0.5), rtol=1e-6)
    np.testing.assert_allclose(confidence(v, ImplicitRule(confidence="linear", alpha=0.5)),
                               1 + 0.5 * v)
    with pytest.raises(ValueError, match="leaves no positive"):
        to_implicit(tables, ImplicitRule(threshold=6.0))
    with pytest.raises(ValueError, match="negatives must be >= 0"):
        to_implicit(tables, ImplicitRule(negatives=-1))


def test_sampler_is_seeded_distinct_and_refuses_a_too_small_pool():
    pool = np.arange(20)
    exclude = np.array([1, 2, 3])
    a = sample_negatives(np.random.default_rng(5), pool, None, exclude, 12)
    b = sample_negatives(np.random.default_rng(5), pool, None, exclude, 12)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 12 and not set(a.tolist()) & {1, 2, 3}
    assert sorted(sample_negatives(np.random.default_rng(0), pool, None, exclude, 18)) == \
        sorted(set(range(20)) - {1, 2, 3})  # the pool is short: every eligible item, once
    with pytest.raises(ValueError, match="every one of the 20 items"):
        sample_negatives(np.random.default_rng(0), pool, None, pool, 1)
    # popularity: a heavy item is drawn first far more often than a light one
    probs = np.full(20, 1.0)
    probs[7] = 200.0
    probs /= probs.sum()
    firsts = [sample_negatives(np.random.default_rng(s), pool, probs, exclude, 1)[0]
              for s in range(200)]
    assert firsts.count(7) > 150


def implicit_cfg(tmp_path, protocol="user-split", **rule):
    base = Config()
    return replace(
        base, data=replace(base.data, feedback="implicit",
                           implicit=replace(base.data.implicit, threshold=4.0, **rule)),
        features=replace(base.features, cache_dir=str(tmp_path / "c"),
                         out_dir=str(tmp_path / "features")),
        tasks=replace(base.tasks, protocol=protocol, melu_item_year_threshold=1997,
                      min_ratings=13, query_size=5, out_dir=str(tmp_path / "tasks")))


@pytest.mark.parametrize("protocol", ["user-split", "melu"])
@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_implicit_tasks_never_hold_a_positive_as_negative(tmp_path, protocol, sampler):
    tables = make_tables()
    cfg = implicit_cfg(tmp_path, protocol, sampler=sampler, negatives=1)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=fake_encoder,
                     data=cfg.data)
    sets = build_task_sets(cfg, tables)
    inter = tables.interactions
    positives = {u: set(g.item_id[g.rating >= 4.0]) for u, g in inter.groupby("user_id")}
    item_ids = load_features(tmp_path / "features").item_ids
    checked = 0
    for name, tasks in sets.items():
        assert tasks.implicit, name
        for part in ("support", "query"):
            items, labels, mask, weights = (getattr(tasks, f"{part}_{k}")
                                            for k in ("items", "ratings", "mask", "weights"))
            assert set(np.unique(labels[mask])) <= {0.0, 1.0}
            assert (weights[mask] > 0).all() and (weights[~mask] == 0).all()
            for t, user in enumerate(tasks.user_ids):
                neg = item_ids[items[t][mask[t] & (labels[t] == 0)]]
                pos = item_ids[items[t][mask[t] & (labels[t] == 1)]]
                assert not set(neg.tolist()) & positives[int(user)], (name, user)
                assert set(pos.tolist()) <= positives[int(user)]
                if "@" not in name:  # negatives per positive, in support and query alike
                    # (melu's toy scenarios hold ~110 items: a heavy user's pool runs short)
                    assert len(neg) == len(pos) if protocol == "user-split" else len(neg) <= len(pos)
                    assert len(set(neg.tolist())) == len(neg)
                checked += 1
        if "@" not in name:
            assert (tasks.query_mask & (tasks.query_ratings == 1)).sum(1).tolist() == \
                [5] * len(tasks)
    assert checked > 50
    manifest = json.loads((tmp_path / "tasks" / "manifest.json").read_text())
    assert manifest["feedback"] == "implicit" and manifest["implicit"]["sampler"] == sampler
    again = load_tasks(tmp_path / "tasks")
    for name, tasks in sets.items():
        np.testing.assert_array_equal(again[name].support_weights, tasks.support_weights)
    first = {p.name: p.read_bytes() for p in (tmp_path / "tasks").iterdir()}
    build_task_sets(cfg, tables)  # the same seed: the same negatives, byte for byte
    assert {p.name: p.read_bytes() for p in (tmp_path / "tasks").iterdir()} == first


def test_features_from_another_feedback_mode_are_refused(tmp_path):
    tables = make_tables()
    cfg = implicit_cfg(tmp_path)
    explicit = replace(cfg, data=replace(cfg.data, feedback="explicit"))
    prepare_features(explicit.features, explicit.tasks, explicit.seed, tables,
                     encode_fn=fake_encoder, data=explicit.data)
    with pytest.raises(ValueError, match="another split"):
        build_task_sets(cfg, tables)


def toy_implicit(n_pos=(4, 2, 0), ratio=2) -> TaskArrays:
    """Three tasks: n positives then ratio*n negatives in support, padded to width 12."""
    n, width, q = len(n_pos), 12, 6
    s_items = np.zeros((n, width), np.int64)
    s_lab = np.zeros((n, width), np.float32)
    s_mask = np.zeros((n, width), bool)
    for t, p in enumerate(n_pos):
        s_items[t, :p * (1 + ratio)] = np.arange(1, p * (1 + ratio) + 1) + 100 * t
        s_lab[t, :p] = 1.0
        s_mask[t, :p * (1 + ratio)] = True
    q_lab = np.tile(np.array([1, 1, 0, 0, 0, 0], np.float32), (n, 1))
    return TaskArrays(user_ids=np.arange(n), user_row=np.arange(n), support_items=s_items,
                      support_ratings=s_lab, support_mask=s_mask,
                      query_items=np.arange(n * q).reshape(n, q) + 50,
                      query_ratings=q_lab, query_mask=np.ones((n, q), bool),
                      support_weights=np.where(s_mask, 1.0 + s_lab, 0).astype(np.float32),
                      query_weights=np.ones((n, q), np.float32))


def test_support_sizes_count_positives_and_keep_the_share_of_negatives():
    tasks = toy_implicit()
    for k in (0, 1, 3, 10):
        cut = limit_support(tasks, k, seed=1)
        pos = (cut.support_mask & (cut.support_ratings > 0)).sum(1)
        neg = (cut.support_mask & (cut.support_ratings == 0)).sum(1)
        assert pos.tolist() == [min(k, 4), min(k, 2), 0]
        assert neg.tolist() == (2 * pos).tolist()
        shot = kshot(tasks, k, seed=1) if k else None
        if shot is not None:
            assert shot.support_mask.shape[1] == max(3 * min(k, 4), 1)
            assert (shot.support_mask & (shot.support_ratings > 0)).sum(1).tolist() == pos.tolist()
            assert set(shot.support_items[shot.support_mask].tolist()) <= \
                set(tasks.support_items[tasks.support_mask].tolist())
            # weights travel with their slots: positives weigh 2, negatives 1
            np.testing.assert_array_equal(shot.support_weights[shot.support_mask],
                                          1.0 + shot.support_ratings[shot.support_mask])


def test_training_resplits_and_support_draws_keep_positives_and_negatives_apart():
    tasks = toy_implicit(n_pos=(4, 4, 4))
    batch = make_batch(torch.zeros((3, 1), dtype=torch.long), tasks)
    assert batch.support_mask[0, :4].tolist() == [2.0] * 4  # confidence weights in the mask
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        keys = torch.rand(3, 18, generator=gen)
        new = resplit(batch, keys, implicit=True)
        q_pos = ((new.query_mask > 0) & (new.query_ratings > 0)).sum(1)
        q_neg = ((new.query_mask > 0) & (new.query_ratings == 0)).sum(1)
        assert q_pos.tolist() == [2, 2, 2] and q_neg.tolist() == [4, 4, 4]
        s_pos = ((new.support_mask > 0) & (new.support_ratings > 0)).sum(1)
        assert s_pos.tolist() == [4, 4, 4]
        # every slot keeps its weight: positives 2 in support, 1 in the query
        both = torch.cat([new.support_mask, new.query_mask], 1)
        labels = torch.cat([new.support_ratings, new.query_ratings], 1)
        assert sorted(set(both[(both > 0) & (labels > 0)].tolist())) in ([1.0, 2.0], [2.0], [1.0])
        draws = torch.rand(3, 2 + 12, generator=gen)
        cut = sample_support(new, draws, full_prob=0.0, max_shots=3, dist="uniform",
                             implicit=True)
        pos = ((cut.support_mask > 0) & (cut.support_ratings > 0)).sum(1)
        neg = ((cut.support_mask > 0) & (cut.support_ratings == 0)).sum(1)
        assert (pos <= 3).all() and (neg == 2 * pos).all()
