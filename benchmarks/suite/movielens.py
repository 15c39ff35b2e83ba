"""Variants of MovieLens-100K, from the canonical tables `metarec data prepare` wrote.

Each function reads the prepared tables (``artifacts/prepared`` of a default run), changes the
ratings or the users' history lengths by a documented, seeded rule, and writes the result in the
generic CSV layout (:mod:`layout`) with the params that read it. Users and items keep their
MovieLens features; the item text is MovieLens' own ("Title. Genres: ... Year: ...").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.tables import CanonicalTables, read_tables

from .layout import Variant, csv_params, write_csv_dataset

USER_FEATURES = {"user_categorical": ("gender", "occupation", "zip_code"),
                 "user_numeric": ("age",)}
ITEM_FEATURES = {"item_numeric": ("year",), "item_multi": ("genres",), "item_text": ("about",)}


def load_prepared(prepared: Path) -> CanonicalTables:
    """The canonical tables of ``prepared`` (a folder with interactions.parquet, ...)."""
    return read_tables(prepared)


def _items_frame(items: pd.DataFrame) -> pd.DataFrame:
    """Canonical items -> items.csv columns; ``about`` is the text after the title, so the CSV
    source rebuilds MovieLens' own text ("Title. Genres: ... Year: ...")."""
    about = [t[len(title) + 2:] if t.startswith(title + ". ") else t
             for title, t in zip(items["title"], items["text"])]
    # The CSV source rejects a missing number (ML-100K's item 267 has no year): the median year
    # stands in; the item text keeps saying nothing about the year.
    year = items["year"].astype("Float64")
    year = year.fillna(float(year.median())).astype("int64")
    return pd.DataFrame({"item_id": items["item_id"], "title": items["title"],
                         "year": year, "genres": [list(g) for g in items["genres"]],
                         "about": [a.removesuffix(".") for a in about]})


def _write(name: str, dest: Path, tables: CanonicalTables, interactions: pd.DataFrame,
           params: dict, stats: dict) -> Variant:
    users = tables.users[tables.users.user_id.isin(interactions.user_id.unique())]
    write_csv_dataset(dest, interactions, users, _items_frame(tables.items))
    counts = interactions.groupby("user_id").size()
    stats = {"users": int(counts.size), "items": int(interactions.item_id.nunique()),
             "ratings": len(interactions), "ratings_per_user": [int(counts.min()),
                                                                     int(counts.max())], **stats}
    return Variant(name, dest, params, None, stats)


def within_user_quintiles(interactions: pd.DataFrame) -> np.ndarray:
    """(N,) quintile 1..5 of each rating within its user's ratings: ceil(5 * (midrank - 0.5) / n).

    Tied ratings share their mid-rank, hence one quintile: the rule adds no noise and keeps each
    user's order, and a user's quintiles average about 3 (exactly 3 without ties).
    """
    midrank = interactions.groupby("user_id")["rating"].rank(method="average")
    n = interactions.groupby("user_id")["rating"].transform("size")
    return np.clip(np.ceil(5.0 * (midrank - 0.5) / n), 1, 5).to_numpy(np.int64)


def ml100k_quintile(dest: Path, prepared: Path, seed: int = 0) -> Variant:
    """Ratings replaced by their within-user quintile (no user bias left; ``seed`` unused: the
    rule is deterministic). Stresses: a model leaning on user offsets gains nothing."""
    tables = load_prepared(prepared)
    inter = tables.interactions.copy()
    inter["rating"] = within_user_quintiles(inter)
    params = csv_params(rating_min=1, rating_max=5, min_ratings=13, max_ratings=100,
                        **USER_FEATURES, **ITEM_FEATURES)
    return _write("ml100k-quintile", dest, tables, inter, params, {"rule": "midrank quintile"})


def ml100k_halfstar(dest: Path, prepared: Path, seed: int = 0, p: float = 0.5) -> Variant:
    """Half-star ratings: r - 0.5 * Bernoulli(p) per rating (seeded), so 1..5 becomes the grid
    0.5..5.0. Stresses: a finer, noisier scale and a rating range not starting at 1."""
    tables = load_prepared(prepared)
    inter = tables.interactions.copy()
    drop = np.random.default_rng([seed, 2]).random(len(inter)) < p
    inter["rating"] = inter["rating"].to_numpy(float) - 0.5 * drop
    params = csv_params(rating_min=0.5, rating_max=5.0, min_ratings=13, max_ratings=100,
                        **USER_FEATURES, **ITEM_FEATURES)
    return _write("ml100k-halfstar", dest, tables, inter, params,
                  {"rule": f"r - 0.5*Bernoulli({p})", "seed": seed})


def ml100k_5to500(dest: Path, prepared: Path, seed: int = 0, share: float = 0.3,
                  low: tuple[int, int] = (5, 12), high: int = 500,
                  query_size: int = 4) -> Variant:
    """Users with 5..500 ratings: a seeded ``share`` of users keep a random 5..12 of their
    ratings; users above ``high`` keep a random ``high``; users below 5 are dropped. The task
    window is 5..500.

    ``query_size`` is 4 because metarec needs a task to have more ratings than its query set
    (metarec.data.tasks.build_tasks): a 5-rating user keeps one support rating. Stresses both
    ends of the window: near-empty support sets and 400+ rating support sets (support width
    496) in one model.
    """
    tables = load_prepared(prepared)
    inter = tables.interactions.sort_values(["user_id", "item_id"]).reset_index(drop=True)
    sizes = inter.groupby("user_id")["item_id"].transform("size")
    inter = inter[sizes >= low[0]].reset_index(drop=True)  # none in ML-100K (20+ each)
    rng = np.random.default_rng([seed, 3])
    users = np.sort(inter.user_id.unique())
    short = set(users[rng.random(len(users)) < share].tolist())
    keep = np.zeros(len(inter), bool)
    for user, rows in inter.groupby("user_id").indices.items():
        n = len(rows)
        target = int(rng.integers(low[0], low[1] + 1)) if user in short else min(n, high)
        keep[rng.choice(rows, size=min(target, n), replace=False)] = True
    inter = inter[keep].reset_index(drop=True)
    params = csv_params(rating_min=1, rating_max=5, min_ratings=low[0], max_ratings=high,
                        **USER_FEATURES, **ITEM_FEATURES, extra={"tasks": {"query_size":
                                                                           query_size}})
    return _write("ml100k-5to500", dest, tables, inter, params,
                  {"short_users": len(short), "short_range": list(low), "cap": high,
                   "query_size": query_size, "seed": seed})
