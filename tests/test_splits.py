"""Cold-start splits on a hand-built dataset whose per-user rating counts are known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.splits import melu_split, user_split
from metarec.data.tables import CanonicalTables, FeatureSpec

# user id -> (ratings on "existing" items released 1990, ratings on "new" items released 1999).
COUNTS = {1: (12, 0), 2: (13, 13), 3: (50, 40), 4: (100, 12), 5: (101, 100), 6: (30, 101),
          7: (20, 20), 8: (40, 15), 9: (14, 60), 10: (99, 99), 11: (13, 0), 12: (0, 13),
          13: (25, 25), 14: (60, 5), 15: (16, 16), 16: (35, 70), 17: (45, 45), 18: (18, 30),
          19: (77, 33), 20: (22, 88)}
N_OLD = N_NEW = 110
OLD_ITEMS = np.arange(1, N_OLD + 1)
NEW_ITEMS = np.arange(1001, 1001 + N_NEW)
NO_YEAR_ITEM = 5000  # rated by everyone, has no release year: in no melu scenario


def make_tables() -> CanonicalTables:
    rows = []
    for user, (n_old, n_new) in COUNTS.items():
        items = [*OLD_ITEMS[:n_old], *NEW_ITEMS[:n_new], NO_YEAR_ITEM]
        rows += [(user, int(i), float(1 + (user + i) % 5), 900_000_000 + 60 * k)
                 for k, i in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    occupations = ["artist", "doctor", "lawyer", "writer"]
    users = pd.DataFrame({"user_id": list(COUNTS), "age": [15 + 3 * u for u in COUNTS],
                          "gender": ["M" if u % 2 else "F" for u in COUNTS],
                          "occupation": [occupations[u % 4] for u in COUNTS]})
    item_ids = [*OLD_ITEMS, *NEW_ITEMS, NO_YEAR_ITEM]
    years = [1990] * N_OLD + [1999] * N_NEW + [None]
    genres = [["Drama"] if i % 2 else ["Comedy", "Drama"] for i in OLD_ITEMS] + \
             [["Horror", "Drama"]] * N_NEW + [[]]
    items = pd.DataFrame({"item_id": item_ids, "title": [f"Movie {i}" for i in item_ids],
                          "year": pd.array(years, dtype="Int64"), "genres": genres})
    items["text"] = items["title"] + ". " + items["genres"].map(", ".join)
    spec = FeatureSpec(user_categorical=("gender", "occupation"), user_numeric=("age",),
                       item_numeric=("year",), item_multi=("genres",))
    return CanonicalTables(inter, users, items, spec, name="toy")


def in_range(n: int) -> bool:
    return 13 <= n <= 100


def melu(seed: int = 0, **kw):
    return melu_split(make_tables(), seed=seed, year_threshold=1997, **kw)


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_id"], df["item_id"]))


@pytest.mark.parametrize("seed", [0, 1])  # seed 1: user 5 (101 existing-item ratings) existing
def test_melu_scenarios_get_exactly_their_users_and_items(seed):
    split = melu(seed)
    new_users = set(range(1, 21)) - set(split.fit_user_ids)
    assert len(new_users) == 4  # 20 users, 20% new
    existing = set(split.fit_user_ids)
    assert set(split.fit_item_ids) == set(OLD_ITEMS)
    expected = {  # users whose count inside the scenario's cell lies in 13..100
        "warm|valid": {u for u in existing if in_range(COUNTS[u][0])},
        "heavy": {u for u in existing if COUNTS[u][0] > 100},  # train only
        "user_cold": {u for u in new_users if in_range(COUNTS[u][0])},
        "item_cold": {u for u in existing if in_range(COUNTS[u][1])},
        "user_item_cold": {u for u in new_users if in_range(COUNTS[u][1])}}
    warm, valid = set(split.user_ids("warm")), set(split.user_ids("warm_valid"))
    assert warm | valid == expected["warm|valid"] | expected["heavy"] and not warm & valid
    assert expected["heavy"] <= warm
    n_warm = len(expected["warm|valid"])
    assert len(valid) == n_warm - int(np.round(0.9 * n_warm))  # the last piece takes the rest
    for name in ("user_cold", "item_cold", "user_item_cold"):
        assert set(split.user_ids(name)) == expected[name], name
    item_groups = {"warm": OLD_ITEMS, "warm_valid": OLD_ITEMS, "user_cold": OLD_ITEMS,
                   "item_cold": NEW_ITEMS, "user_item_cold": NEW_ITEMS}
    for name, df in split.sets.items():
        assert set(df["item_id"]) <= set(item_groups[name]), name
        # every task holds all of its user's ratings in the cell
        for user, size in df.groupby("user_id").size().items():
            assert size == COUNTS[user][0 if item_groups[name] is OLD_ITEMS else 1]
    # users 1 (12 ratings) and 6's new-item cell (101) are out of range; 5 (101 existing-item
    # ratings) trains if it is an existing user, and never validates
    assert 1 not in warm | valid and 5 not in valid and (5 in warm) == (5 in existing)
    assert 6 not in set(split.user_ids("item_cold"))


def test_no_rating_is_in_two_places_and_nothing_is_invented():
    split = melu()
    all_pairs = pairs(make_tables().interactions)
    seen: set[tuple[int, int]] = set()
    for df in split.sets.values():
        p = pairs(df)
        assert len(p) == len(df) and not p & seen and p <= all_pairs
        seen |= p
    assert all(item != NO_YEAR_ITEM for _, item in seen)


def test_melu_is_seeded():
    a, b, c = melu(0), melu(0), melu(1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert a.counts() == b.counts()


def test_user_split_8_1_1_over_eligible_users():
    split = user_split(make_tables(), seed=3)
    eligible = {u for u, (a, b) in COUNTS.items() if in_range(a + b + 1)}
    heavy = {u for u, (a, b) in COUNTS.items() if a + b + 1 > 100}  # train only
    sets = {n: set(split.user_ids(n)) for n in ("train", "valid", "test")}
    assert heavy and set.union(*sets.values()) == eligible | heavy
    assert sum(map(len, sets.values())) == len(eligible | heavy)
    assert heavy <= sets["train"]
    n = len(eligible)
    cut1, cut2 = int(np.round(0.8 * n)), int(np.round(0.9 * n))
    assert (len(sets["train"] - heavy), len(sets["valid"]), len(sets["test"])) == (
        cut1, cut2 - cut1, n - cut2)
    tables = make_tables()
    for name, df in split.sets.items():  # a task keeps every rating of its user
        expect = tables.interactions[tables.interactions.user_id.isin(sets[name])]
        assert pairs(df) == pairs(expect)
    assert set(split.fit_user_ids) == sets["train"]


def test_user_split_counts_what_each_rule_dropped():
    split = user_split(make_tables(), seed=3, min_ratings=30)
    few = [a + b + 1 for a, b in COUNTS.values() if a + b + 1 < 30]  # + the no-year rating
    assert split.dropped == {"too_few_ratings": {"users": len(few), "ratings": sum(few)},
                             "too_many_ratings": {"users": 0, "ratings": 0}}



def test_heavy_users_leave_the_valid_and_test_users_as_they_were():
    tables = make_tables()
    heavy = [u for u, (a, b) in COUNTS.items() if a + b + 1 > 100]
    light = make_tables()
    light.interactions = light.interactions[~light.interactions.user_id.isin(heavy)]
    a, b = user_split(tables, seed=3), user_split(light, seed=3)
    for name in ("valid", "test"):
        assert pairs(a.sets[name]) == pairs(b.sets[name]), name
    assert set(a.user_ids("train")) == set(b.user_ids("train")) | set(heavy)


@pytest.mark.parametrize("seed", [0, 1])
def test_melu_counts_what_each_rule_dropped(seed):
    split = melu(seed)
    existing = set(split.fit_user_ids)
    few: dict[int, int] = {}
    many: dict[int, int] = {}
    for user, (n_old, n_new) in COUNTS.items():
        for n, evaluated in ((n_old, user not in existing), (n_new, True)):
            if 0 < n < 13:
                few[user] = few.get(user, 0) + n
            if n > 100 and evaluated:  # existing users' existing-item cell trains instead
                many[user] = many.get(user, 0) + n
    assert split.dropped == {
        "no_release_year": {"users": len(COUNTS), "ratings": len(COUNTS)},
        "too_few_ratings": {"users": len(few), "ratings": sum(few.values())},
        "too_many_ratings": {"users": len(many), "ratings": sum(many.values())}}
    assert (5 in set(split.user_ids("warm"))) == (5 in existing)
    kept = sum(len(df) for df in split.sets.values())
    total = len(make_tables().interactions)
    assert kept + sum(v["ratings"] for v in split.dropped.values()) == total


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="split_ratios"):
        user_split(make_tables(), seed=0, ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="'release'"):
        melu(year_column="release")
    tables = make_tables()
    tables.interactions = pd.concat([tables.interactions, tables.interactions.iloc[:1]])
    with pytest.raises(ValueError, match="repeated"):
        user_split(tables, seed=0)
