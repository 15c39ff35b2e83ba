"""Task tensors: query sizes, disjoint support/query, padding masks, k-shot, artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from metarec.config import Config
from metarec.data.splits import melu_split
from metarec.data.tasks import (build_split_tasks, build_tasks, dropped_by_width, kshot,
                                load_tasks, rotate_queries)
from metarec.pipeline.tasks import build_task_sets
from metarec.features.build import build_features, prepare_features
from tests.test_encoders import fake_encoder
from tests.test_splits import make_tables


@pytest.fixture
def features(tmp_path):
    tables = make_tables()
    split = melu_split(tables, seed=0, year_threshold=1997)
    cfg = Config().features
    return build_features(tables, split, replace(cfg, cache_dir=str(tmp_path)), fake_encoder)[0]


def ratings_of(tasks, t, features, part):
    items, ratings, mask = (getattr(tasks, f"{part}_{k}") for k in ("items", "ratings", "mask"))
    return {(int(features.item_ids[i]), float(r)) for i, r in zip(items[t][mask[t]],
                                                                  ratings[t][mask[t]])}


def test_tasks_split_each_users_ratings_into_query_and_support(features):
    inter = make_tables().interactions
    inter = inter[inter.user_id.isin([2, 3, 7])]
    tasks = build_tasks(inter, features, query_size=10, support_width=95, seed=0)
    assert tasks.user_ids.tolist() == [2, 3, 7]
    assert features.user_ids[tasks.user_row].tolist() == [2, 3, 7]
    assert tasks.query_mask.shape == (3, 10) and tasks.query_mask.all()
    for t, user in enumerate([2, 3, 7]):
        mine = inter[inter.user_id == user]
        query = ratings_of(tasks, t, features, "query")
        support = ratings_of(tasks, t, features, "support")
        assert len(query) == 10 and len(support) == len(mine) - 10
        assert not {i for i, _ in query} & {i for i, _ in support}
        assert query | support == set(zip(mine.item_id, mine.rating.astype(float)))
        n = len(mine) - 10  # valid slots first, then padding: item row 0, rating 0, mask False
        assert tasks.support_mask[t].tolist() == [True] * n + [False] * (95 - n)
        assert (tasks.support_items[t, n:] == 0).all() and (tasks.support_ratings[t, n:] == 0).all()
    again = build_tasks(inter, features, query_size=10, support_width=95, seed=0)
    np.testing.assert_array_equal(again.query_items, tasks.query_items)
    other = build_tasks(inter, features, query_size=10, support_width=95, seed=1)
    assert not np.array_equal(other.query_items, tasks.query_items)


def test_too_few_ratings_and_unknown_items_are_errors(features):
    inter = make_tables().interactions
    with pytest.raises(ValueError, match="more than query_size"):
        build_tasks(inter[inter.user_id == 1].head(10), features, query_size=10,
                    support_width=90, seed=0)
    bad = pd.DataFrame({"user_id": [2] * 12, "item_id": range(90_000, 90_012),
                        "rating": 3.0, "timestamp": 0})
    with pytest.raises(ValueError, match="no feature row"):
        build_tasks(bad, features, query_size=10, support_width=90, seed=0)


def test_kshot_caps_support_with_a_subset(features):
    inter = make_tables().interactions
    inter = inter[inter.user_id.isin([2, 12])]  # 2: 17 support ratings, 12: 4
    tasks = build_tasks(inter, features, query_size=10, support_width=90, seed=0)
    for k in (1, 3, 5, 10):
        sub = kshot(tasks, k, seed=4)
        assert sub.support_mask.shape == (2, k)
        assert sub.support_mask.sum(1).tolist() == [min(k, 17), min(k, 4)]
        for t in range(2):
            assert ratings_of(sub, t, features, "support") <= ratings_of(tasks, t, features,
                                                                          "support")
        assert (sub.support_items[~sub.support_mask] == 0).all()
        np.testing.assert_array_equal(sub.query_items, tasks.query_items)
    np.testing.assert_array_equal(kshot(tasks, 3, 4).support_items,
                                  kshot(tasks, 3, 4).support_items)


def test_rotated_queries_read_more_of_each_users_ratings_and_lose_none(features):
    """train.valid_rotations: each copy of a task queries another disjoint block of its support
    (the original query moves into the support), the user's ratings stay the same set, a task
    rotates only as often as its support holds full blocks, and 1 is the tasks as they are."""
    inter = make_tables().interactions
    inter = inter[inter.user_id.isin([2, 12])]
    tasks = build_tasks(inter, features, query_size=4, support_width=90, seed=0)
    assert tasks.support_mask.sum(1).tolist() == [23, 10]  # 5 and 2 blocks of 4
    assert rotate_queries(tasks, 1) is tasks
    rot = rotate_queries(tasks, 5, seed=3)  # the original and up to 4 rotations
    assert rot.user_ids.tolist() == [2, 12, 2, 12, 2, 12, 2, 2]
    assert rot.support_mask.shape[1:] == tasks.support_mask.shape[1:] and rot.query_mask.all()
    queried = {2: [], 12: []}
    for t, user in enumerate(rot.user_ids.tolist()):
        row = tasks.user_ids.tolist().index(user)
        both = ratings_of(rot, t, features, "query") | ratings_of(rot, t, features, "support")
        assert both == (ratings_of(tasks, row, features, "query")
                        | ratings_of(tasks, row, features, "support"))
        assert not ratings_of(rot, t, features, "query") & ratings_of(rot, t, features, "support")
        queried[user] += sorted(ratings_of(rot, t, features, "query"))
    assert len(set(queried[2])) == len(queried[2]) == 20  # disjoint blocks
    assert len(set(queried[12])) == len(queried[12]) == 12
    np.testing.assert_array_equal(rotate_queries(tasks, 5, seed=3).query_items, rot.query_items)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="valid_rotations"):
            rotate_queries(tasks, bad)


def test_support_width_drops_are_counted(features):
    split = melu_split(make_tables(), seed=1, year_threshold=1997)  # user 5 trains with 101
    sets = build_split_tasks(split, features, query_size=10, support_width=40)
    lost = {name: {u: n - 50 for u, n in df.groupby("user_id").size().items() if n > 50}
            for name, df in split.sets.items()}
    assert lost["warm"][5] == 51
    users = set().union(*lost.values())
    assert dropped_by_width(split, sets) == {
        "users": len(users), "ratings": sum(sum(v.values()) for v in lost.values())}


def test_build_task_sets_end_to_end_deterministic(tmp_path):
    tables = make_tables()
    base = Config()
    cfg = replace(base, features=replace(base.features, cache_dir=str(tmp_path / "c"),
                                         out_dir=str(tmp_path / "features")),
                  tasks=replace(base.tasks, protocol="melu", melu_item_year_threshold=1997,
                                out_dir=str(tmp_path / "tasks")))
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=fake_encoder)
    sets = build_task_sets(cfg, tables)
    first = {p.name: p.read_bytes() for p in (tmp_path / "tasks").iterdir()}
    assert {"warm.npz", "warm_valid.npz", "user_cold@k5.npz", "manifest.json"} <= set(first)
    assert "warm@k1.npz" not in first  # no k-shot variants of the training set
    manifest = json.loads(first["manifest.json"])
    assert manifest["sets"]["warm"]["tasks"] == len(sets["warm"])
    assert manifest["training"] == ["warm"] and manifest["seed"] == 0
    assert manifest["dropped"] == {**melu_split(tables, seed=0, year_threshold=1997).dropped,
                                   "support_width": {"users": 0, "ratings": 0}}
    for name, tasks in sets.items():
        assert tasks.query_mask.shape[1] == 10 and tasks.query_mask.all()
        if "@" not in name:  # every task holds 13..100 ratings of its user
            sizes = tasks.support_mask.sum(1) + tasks.query_mask.sum(1)
            assert ((sizes >= 13) & (sizes <= 100)).all(), name
    loaded = load_tasks(tmp_path / "tasks", ["warm"])["warm"]
    np.testing.assert_array_equal(loaded.support_items, sets["warm"].support_items)
    build_task_sets(cfg, tables)
    assert {p.name: p.read_bytes() for p in (tmp_path / "tasks").iterdir()} == first
    stale = replace(cfg, tasks=replace(cfg.tasks, seed=7))
    with pytest.raises(ValueError, match="another split"):
        build_task_sets(stale, tables)
