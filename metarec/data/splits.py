"""Cold-start splits: which users' ratings become tasks of which scenario, under two protocols.

``melu`` (Lee et al., "MeLU", KDD 2019; MovieLens-1M):
    Items released in or before ``year_threshold`` are *existing*, later ones *new* (items with
    no release year are left out). All users are split at random into *existing* (1 -
    ``new_user_fraction``) and *new* users. A rating lands in exactly one scenario:

    =================  ==============  ==========  ===========================================
    scenario           users           items       role
    =================  ==============  ==========  ===========================================
    ``warm``           existing        existing    meta-training pool
    ``warm_valid``     existing (held  existing    early stopping: a ``valid_fraction`` of the
                       out)                        existing users, so training users/items only
    ``user_cold``      new             existing    evaluation
    ``item_cold``      existing        new         evaluation (warm and warm_valid users)
    ``user_item_cold`` new             new         evaluation
    =================  ==============  ==========  ===========================================

    A user becomes a task of a scenario only if it has ``min_ratings..max_ratings`` ratings
    *within that scenario* (as MeLU's dataset generator counts them); only ``warm`` (training)
    also takes the existing users with more (their support is subsampled to the task width).

``user-split`` (the RecBole-MetaRec benchmark):
    Users with ``min_ratings..max_ratings`` interactions are split ``ratios`` (8:1:1) at random
    into ``train``, ``valid`` and ``test``; every item is shared. Users with more than
    ``max_ratings`` join ``train`` (their support is subsampled to the task width), so the
    valid/test users are those of the published protocol and only training gains.

Each split counts what every rule dropped (:attr:`ColdStartSplit.dropped`, ``{rule: {"users",
"ratings"}}``): ``too_few_ratings`` / ``too_many_ratings`` (a user's rows in a set or scenario
cell outside ``min_ratings..max_ratings``) and, for ``melu``, ``no_release_year`` (ratings of
items without a release year). ``users`` counts the distinct users that lost ratings to a rule,
``ratings`` the ratings it removed.

Encoders are fitted on ``fit_user_ids``/``fit_item_ids`` only: existing users and items for
``melu``, train users and the items they rated for ``user-split``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from metarec.config import TasksConfig
from metarec.data.tables import INTERACTION_COLUMNS, CanonicalTables

log = logging.getLogger(__name__)

MELU_SCENARIOS = ("warm", "warm_valid", "user_cold", "item_cold", "user_item_cold")
USER_SPLIT_SETS = ("train", "valid", "test")
TRAINING_SETS = {"melu": ("warm",), "user-split": ("train",)}
VALID_SETS = {"melu": ("warm_valid",), "user-split": ("valid",)}


@dataclass(frozen=True)
class ColdStartSplit:
    """Per scenario/split name, the interactions of its task users (canonical columns)."""

    protocol: str
    seed: int
    sets: dict[str, pd.DataFrame]
    fit_user_ids: np.ndarray  # (Uf,) int64, sorted: users whose attributes fit the encoders
    fit_item_ids: np.ndarray  # (If,) int64, sorted: items whose attributes fit the encoders
    # Per rule, the users and ratings it removed (module docstring); not part of the fingerprint.
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def training(self) -> tuple[str, ...]:
        """Names of the meta-training sets."""
        return TRAINING_SETS[self.protocol]

    @property
    def validation(self) -> tuple[str, ...]:
        """Names of the early-stopping sets."""
        return VALID_SETS[self.protocol]

    def user_ids(self, name: str) -> np.ndarray:
        """(N,) sorted int64 ids of the task users of set ``name``."""
        return np.unique(self.sets[name]["user_id"].to_numpy(dtype=np.int64))

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"tasks": int(df["user_id"].nunique()), "ratings": len(df),
                       "items": int(df["item_id"].nunique())} for name, df in self.sets.items()}

    def fingerprint(self) -> str:
        """sha256 over protocol, seed and every set's (user, item) pairs: equal splits, equal
        hash. Recorded by the feature build and checked by the task build."""
        digest = hashlib.sha256(f"{self.protocol}|{self.seed}".encode())
        for name in sorted(self.sets):
            df = self.sets[name]
            digest.update(name.encode())
            digest.update(df["user_id"].to_numpy(np.int64).tobytes())
            digest.update(df["item_id"].to_numpy(np.int64).tobytes())
        digest.update(self.fit_user_ids.tobytes())
        digest.update(self.fit_item_ids.tobytes())
        return digest.hexdigest()


def _sorted(interactions: pd.DataFrame) -> pd.DataFrame:
    return (interactions.loc[:, list(INTERACTION_COLUMNS)]
            .sort_values(["user_id", "timestamp", "item_id"], kind="mergesort")
            .reset_index(drop=True))


def _by_size(interactions: pd.DataFrame, min_ratings: int, max_ratings: int
             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows of users with fewer than min_ratings, min_ratings..max_ratings, and more than
    max_ratings rows in ``interactions`` (too few, eligible, too many)."""
    sizes = interactions.groupby("user_id")["item_id"].transform("size")
    return tuple(interactions[m].reset_index(drop=True)  # type: ignore[return-value]
                 for m in (sizes < min_ratings, (sizes >= min_ratings) & (sizes <= max_ratings),
                           sizes > max_ratings))


def _tally(dropped: dict[str, list[pd.DataFrame]]) -> dict[str, dict[str, int]]:
    """``{rule: rows it removed}`` -> ``{rule: {"users": distinct users, "ratings": rows}}``."""
    out = {}
    for rule, parts in dropped.items():
        users = set().union(*(df["user_id"].unique().tolist() for df in parts)) if parts else set()
        out[rule] = {"users": len(users), "ratings": int(sum(len(df) for df in parts))}
    return out


def _check(tables: CanonicalTables, min_ratings: int, max_ratings: int) -> pd.DataFrame:
    missing = [c for c in INTERACTION_COLUMNS if c not in tables.interactions.columns]
    if missing:
        raise ValueError(f"interactions table lacks column(s) {missing}")
    if not 0 < min_ratings <= max_ratings:
        raise ValueError(f"need 0 < min_ratings <= max_ratings, got {min_ratings}..{max_ratings}")
    dup = tables.interactions.duplicated(["user_id", "item_id"])
    if dup.any():
        row = tables.interactions[dup].iloc[0]
        raise ValueError(f"interactions hold {int(dup.sum())} repeated (user_id, item_id) pairs, "
                         f"e.g. ({row.user_id}, {row.item_id}); deduplicate before splitting")
    return _sorted(tables.interactions)


def _shuffled(ids: np.ndarray, seed: int, salt: int) -> np.ndarray:
    return np.random.default_rng([seed, salt]).permutation(np.sort(ids))


def _cut(ids: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
    """Consecutive pieces of ``ids`` of the given fractions (rounded; the last takes the rest)."""
    bounds = np.round(np.cumsum(fractions)[:-1] * len(ids)).astype(int)
    return [np.sort(p) for p in np.split(ids, bounds)]


def user_split(tables: CanonicalTables, *, seed: int, ratios: Sequence[float] = (0.8, 0.1, 0.1),
               min_ratings: int = 13, max_ratings: int = 100) -> ColdStartSplit:
    """The RecBole-MetaRec protocol: eligible users split ``ratios`` into train/valid/test."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-9:
        raise ValueError(f"split_ratios must be three non-negative fractions summing to 1, "
                         f"got {tuple(ratios)}")
    few, inter, many = _by_size(_check(tables, min_ratings, max_ratings), min_ratings,
                                max_ratings)
    users = _shuffled(inter["user_id"].unique(), seed, 1)
    sets = {name: inter[inter["user_id"].isin(ids)].reset_index(drop=True)
            for name, ids in zip(USER_SPLIT_SETS, _cut(users, ratios))}
    train = sets["train"] = _sorted(pd.concat([sets["train"], many]))  # heavy users train
    dropped = _tally({"too_few_ratings": [few], "too_many_ratings": []})
    log.info("user-split dropped %s; %d users with more than %d ratings train", dropped,
             many["user_id"].nunique(), max_ratings)
    return ColdStartSplit("user-split", seed, sets,
                          np.sort(train["user_id"].unique()).astype(np.int64),
                          np.sort(train["item_id"].unique()).astype(np.int64), dropped)


def melu_split(tables: CanonicalTables, *, seed: int, year_threshold: int,
               year_column: str = "year", new_user_fraction: float = 0.2,
               valid_fraction: float = 0.1, min_ratings: int = 13,
               max_ratings: int = 100) -> ColdStartSplit:
    """MeLU's four scenarios (+ ``warm_valid``); see the module docstring."""
    for name, frac in (("new_user_fraction", new_user_fraction),
                       ("valid_fraction", valid_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"melu {name} must lie in [0, 1), got {frac}")
    if year_column not in tables.items.columns:
        raise ValueError(f"melu protocol needs the item column '{year_column}' (release year); "
                         f"items have {list(tables.items.columns)}")
    inter = _check(tables, min_ratings, max_ratings)
    years = pd.to_numeric(tables.items[year_column], errors="coerce")
    known = years.notna()
    existing_items = tables.items.loc[known & (years <= year_threshold), "item_id"].to_numpy()
    new_items = tables.items.loc[known & (years > year_threshold), "item_id"].to_numpy()
    all_users = np.union1d(tables.users["user_id"].to_numpy() if len(tables.users) else [],
                           inter["user_id"].unique()).astype(np.int64)
    existing_users, new_users = _cut(_shuffled(all_users, seed, 2),
                                     (1 - new_user_fraction, new_user_fraction))
    dropped: dict[str, list[pd.DataFrame]] = {
        "no_release_year": [inter[~inter["item_id"].isin(tables.items.loc[known, "item_id"])]],
        "too_few_ratings": [], "too_many_ratings": []}

    def cell(users: np.ndarray, items: np.ndarray, *, training: bool = False
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(eligible rows, rows of users with too many) of a cell; records what it drops."""
        rows = inter[inter["user_id"].isin(users) & inter["item_id"].isin(items)]
        few, ok, many = _by_size(rows, min_ratings, max_ratings)
        dropped["too_few_ratings"].append(few)
        if not training:
            dropped["too_many_ratings"].append(many)
        return ok, many

    # Validation users: a random part of the existing users *with* a warm task (users with
    # more warm ratings than max_ratings only train, so the held-out users are MeLU's).
    warm_all, warm_many = cell(existing_users, existing_items, training=True)
    warm_train_users, valid_users = _cut(_shuffled(warm_all["user_id"].unique(), seed, 3),
                                         (1 - valid_fraction, valid_fraction))
    sets = {"warm": _sorted(pd.concat([warm_all[warm_all["user_id"].isin(warm_train_users)],
                                       warm_many])),
            "warm_valid": warm_all[warm_all["user_id"].isin(valid_users)].reset_index(drop=True),
            "user_cold": cell(new_users, existing_items)[0],
            "item_cold": cell(existing_users, new_items)[0],
            "user_item_cold": cell(new_users, new_items)[0]}
    counts = _tally(dropped)
    log.info("melu split (items <= %d existing: %d existing / %d new items, %d existing / %d "
             "new users): %s; dropped %s", year_threshold, len(existing_items), len(new_items),
             len(existing_users), len(new_users),
             {k: int(v["user_id"].nunique()) for k, v in sets.items()}, counts)
    return ColdStartSplit("melu", seed, sets, existing_users,
                          np.sort(existing_items).astype(np.int64), counts)


def make_split(tables: CanonicalTables, tasks_cfg: TasksConfig, seed: int) -> ColdStartSplit:
    """The split ``tasks_cfg.protocol`` names."""
    common = dict(seed=seed, min_ratings=tasks_cfg.min_ratings, max_ratings=tasks_cfg.max_ratings)
    if tasks_cfg.protocol == "melu":
        return melu_split(tables, year_threshold=tasks_cfg.melu_item_year_threshold,
                          year_column=tasks_cfg.melu_year_column,
                          new_user_fraction=tasks_cfg.melu_new_user_fraction,
                          valid_fraction=tasks_cfg.melu_valid_fraction, **common)
    if tasks_cfg.protocol == "user-split":
        return user_split(tables, ratios=tasks_cfg.split_ratios, **common)
    raise ValueError(f"unknown cold-start protocol {tasks_cfg.protocol!r} "
                     "(expected 'melu' or 'user-split')")


def split_from_config(tasks_cfg: TasksConfig, seed: int, tables: CanonicalTables
                      ) -> ColdStartSplit:
    """The configured split: seeded by ``tasks.seed``, else the top-level ``seed``."""
    return make_split(tables, tasks_cfg, tasks_cfg.seed if tasks_cfg.seed is not None else seed)
