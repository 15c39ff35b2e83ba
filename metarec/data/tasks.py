"""Few-shot tasks: one per (set, user), padded to dense :class:`TaskArrays`.

A task's ratings (those of its user in one split set, see :mod:`metarec.data.splits`) are
shuffled with a seeded generator; the first ``query_size`` form the query set, the rest the
support set, padded to ``support_width`` (default ``max_ratings - query_size``). Padded slots
point at item row 0 with mask False.

Set names: ``train``/``valid``/``test`` (``user-split``); ``warm`` (meta-training),
``warm_valid`` (early stopping), ``user_cold``, ``item_cold``, ``user_item_cold`` (``melu``).
K-shot variants of every evaluation set (all but the training set) are named ``<set>@k<k>``:
the same tasks and queries with the support capped at ``k`` random ratings.

Artifacts in ``cfg.tasks.out_dir``: one ``<name>.npz`` per set and ``manifest.json`` (counts
per set, seeds, data/encoder/split hashes, and under ``"dropped"`` the users and ratings each
rule removed, ``{rule: {"users": int, "ratings": int}}``: the split's rules and
``support_width``, :func:`dropped_by_width`), byte-identical for the same data and seed.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.config import ImplicitRule
from metarec.data.arrays import (FeatureArrays, TaskArrays, pick_support, rows_of as _rows_of,
                                 user_groups)
from metarec.data.implicit import build_implicit_tasks, negative_pools
from metarec.data.npz import read_npz, write_npz
from metarec.data.splits import ColdStartSplit
from metarec.io import atomic_dir

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
TASK_FIELDS = ("user_ids", "user_row", "support_items", "support_ratings", "support_mask",
               "query_items", "query_ratings", "query_mask")
WEIGHT_FIELDS = ("support_weights", "query_weights")  # implicit tasks only


def _salt(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def build_tasks(interactions: pd.DataFrame, features: FeatureArrays, *, query_size: int,
                support_width: int, seed: int) -> TaskArrays:
    """Tasks of every user in ``interactions`` (user_id, item_id, rating[, timestamp]).

    Users are taken in id order; each must have more than ``query_size`` ratings. Support sets
    longer than ``support_width`` keep ``support_width`` random ratings (logged).
    """
    users, starts, sizes, item_rows, ratings = user_groups(
        interactions, features, query_size=query_size, support_width=support_width)
    n = len(users)
    out = {"support_items": np.zeros((n, support_width), np.int64),
           "support_ratings": np.zeros((n, support_width), np.float32),
           "support_mask": np.zeros((n, support_width), bool),
           "query_items": np.zeros((n, query_size), np.int64),
           "query_ratings": np.zeros((n, query_size), np.float32),
           "query_mask": np.zeros((n, query_size), bool)}
    rng = np.random.default_rng(seed)
    truncated = 0
    for t, (start, size) in enumerate(zip(starts, sizes)):
        order = start + rng.permutation(size)
        query, support = order[:query_size], order[query_size:query_size + support_width]
        truncated += size - query_size - len(support)
        out["query_items"][t] = item_rows[query]
        out["query_ratings"][t] = ratings[query]
        out["query_mask"][t] = True
        out["support_items"][t, :len(support)] = item_rows[support]
        out["support_ratings"][t, :len(support)] = ratings[support]
        out["support_mask"][t, :len(support)] = True
    if truncated:
        log.warning("support_width=%d dropped %d support ratings", support_width, truncated)
    return TaskArrays(user_ids=users, user_row=_rows_of(users, features.user_ids, "user"), **out)


def kshot(tasks: TaskArrays, k: int, seed: int) -> TaskArrays:
    """The same tasks with each support set capped at ``k`` random ratings, width ``k``.

    Tasks with fewer than ``k`` support ratings keep them all (padded). Queries are unchanged.
    Implicit tasks keep ``k`` positives and their share of negatives
    (:func:`metarec.data.arrays.support_quota`), width the largest number kept.
    """
    if k < 1:
        raise ValueError(f"k-shot needs k >= 1, got {k}")
    if tasks.implicit:
        return _implicit_kshot(tasks, k, seed)
    n, width = tasks.support_mask.shape
    keys = np.random.default_rng(seed).random((n, width))
    keys[~tasks.support_mask] = np.inf  # padding sorts last
    pick = np.argsort(keys, axis=1, kind="stable")[:, :k]  # (N, min(k, S))
    mask = np.take_along_axis(tasks.support_mask, pick, axis=1)
    pad = k - pick.shape[1]

    def take(a: np.ndarray) -> np.ndarray:
        picked = np.where(mask, np.take_along_axis(a, pick, axis=1), 0).astype(a.dtype)
        return np.pad(picked, ((0, 0), (0, pad)))
    return TaskArrays(user_ids=tasks.user_ids, user_row=tasks.user_row,
                      support_items=take(tasks.support_items),
                      support_ratings=take(tasks.support_ratings),
                      support_mask=np.pad(mask, ((0, 0), (0, pad))),
                      query_items=tasks.query_items, query_ratings=tasks.query_ratings,
                      query_mask=tasks.query_mask)


def _implicit_kshot(tasks: TaskArrays, k: int, seed: int) -> TaskArrays:
    kept = pick_support(tasks, k, seed)
    width = max(int(kept.sum(1).max(initial=0)), 1)
    pick = np.argsort(~kept, axis=1, kind="stable")[:, :width]  # kept slots first, in order
    mask = np.take_along_axis(kept, pick, axis=1)

    def take(a: np.ndarray) -> np.ndarray:
        return np.where(mask, np.take_along_axis(a, pick, axis=1), 0).astype(a.dtype)
    return TaskArrays(user_ids=tasks.user_ids, user_row=tasks.user_row,
                      support_items=take(tasks.support_items),
                      support_ratings=take(tasks.support_ratings), support_mask=mask,
                      query_items=tasks.query_items, query_ratings=tasks.query_ratings,
                      query_mask=tasks.query_mask, support_weights=take(tasks.support_weights),
                      query_weights=tasks.query_weights)


def build_split_tasks(split: ColdStartSplit, features: FeatureArrays, *, query_size: int,
                      support_width: int, kshots: tuple[int, ...] = (),
                      implicit: ImplicitRule | None = None,
                      interactions: pd.DataFrame | None = None) -> dict[str, TaskArrays]:
    """Tasks of every set of ``split`` plus the k-shot variants of its evaluation sets.

    ``implicit``: the split holds positives (:func:`metarec.data.implicit.to_implicit`) and
    the tasks get sampled negatives by that rule; ``interactions`` then holds every positive
    of the data (none of them is ever sampled as a user's negative).
    """
    if implicit is not None:
        if interactions is None:
            raise ValueError("implicit tasks need the positives of the whole data")
        positives_of, pools = negative_pools(split.sets, split.training, interactions,
                                             features, implicit)
    sets: dict[str, TaskArrays] = {}
    for name in sorted(split.sets):
        seed = split.seed + _salt(name)
        if implicit is None:
            tasks = build_tasks(split.sets[name], features, query_size=query_size,
                                support_width=support_width, seed=seed)
        else:
            pool, probs = pools[name]
            tasks = build_implicit_tasks(split.sets[name], features, query_size=query_size,
                                         support_width=support_width,
                                         negatives=implicit.negatives, seed=seed,
                                         positives_of=positives_of, pool=pool, probs=probs)
        sets[name] = tasks
        if name not in split.training:
            for k in kshots:
                sets[f"{name}@k{k}"] = kshot(tasks, k, split.seed + _salt(f"{name}@k{k}"))
    return sets


def dropped_by_width(split: ColdStartSplit, sets: dict[str, TaskArrays]) -> dict[str, int]:
    """The users and ratings of ``split`` that no task holds: support ratings beyond the
    support width (users with more than ``max_ratings`` ratings train on a random subset).
    ``users`` counts distinct users, ``ratings`` every rating left out."""
    users: set[int] = set()
    ratings = 0
    for name, df in split.sets.items():
        tasks = sets[name]  # one task per user, in user-id order
        if tasks.implicit:  # positives held; sampled negatives are not the user's data
            held = ((tasks.support_mask & (tasks.support_ratings > 0)).sum(1)
                    + (tasks.query_mask & (tasks.query_ratings > 0)).sum(1))
        else:
            held = tasks.support_mask.sum(1) + tasks.query_mask.sum(1)
        lost = df.groupby("user_id").size().sort_index().to_numpy() - held
        users |= set(tasks.user_ids[lost > 0].tolist())
        ratings += int(lost.sum())
    return {"users": len(users), "ratings": ratings}


def task_counts(sets: dict[str, TaskArrays]) -> dict[str, dict[str, int]]:
    return {name: {"tasks": len(t), "support_ratings": int(t.support_mask.sum()),
                   "query_ratings": int(t.query_mask.sum()),
                   "support_width": int(t.support_mask.shape[1]),
                   "query_size": int(t.query_mask.shape[1])} for name, t in sets.items()}


def save_tasks(sets: dict[str, TaskArrays], dest: str | Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``<name>.npz`` per set and manifest.json into ``dest``, atomically."""
    manifest = {"sets": task_counts(sets), **(extra or {})}
    with atomic_dir(dest) as tmp:
        for name, tasks in sets.items():
            fields = TASK_FIELDS + (WEIGHT_FIELDS if tasks.implicit else ())
            write_npz(tmp / f"{name}.npz", {f: getattr(tasks, f) for f in fields})
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8")
    return Path(dest)


def load_tasks(src: str | Path, names: list[str] | None = None) -> dict[str, TaskArrays]:
    """Read sets written by :func:`save_tasks` (all, or those in ``names``)."""
    src = Path(src)
    path = src / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec tasks build` first")
    available = json.loads(path.read_text(encoding="utf-8"))["sets"]
    unknown = sorted(set(names or ()) - set(available))
    if unknown:
        raise KeyError(f"no task set(s) {unknown} in {src}; available: {sorted(available)}")
    return {n: TaskArrays(**read_npz(src / f"{n}.npz")) for n in (names or sorted(available))}


def rotate_queries(tasks: TaskArrays, rotations: int, seed: int = 0) -> TaskArrays:
    """``tasks`` and, for each task, up to ``rotations - 1`` copies that query another block of
    its support ratings (the original query joins the support in the block's slots), so a
    validation user with many ratings is read on up to ``rotations`` times as many query
    ratings. Blocks are disjoint, the query width long, in a seeded random order; a task gets
    rotation j only when its support holds j such blocks. Shapes are unchanged; explicit tasks
    only (``train.valid_rotations``: early stopping on more of each validation user's ratings)."""
    if isinstance(rotations, bool) or not isinstance(rotations, int) or rotations < 1:
        raise ValueError(f"train.valid_rotations must be an int >= 1, got {rotations!r}")
    if rotations == 1 or len(tasks) == 0:
        return tasks
    if tasks.implicit:
        raise ValueError("train.valid_rotations > 1 needs explicit ratings (implicit tasks hold "
                         "sampled negatives); set it to 1")
    n, width = tasks.support_mask.shape
    q = tasks.query_mask.shape[1]
    keys = np.random.default_rng(seed).random((n, width))
    keys[~tasks.support_mask] = np.inf  # real ratings first
    order = np.argsort(keys, axis=1, kind="stable")
    count = tasks.support_mask.sum(1)
    parts = [tasks]
    for j in range(1, min(rotations, width // q + 1)):
        rows = np.nonzero(count >= j * q)[0]
        if len(rows) == 0:
            break
        block = order[rows, (j - 1) * q:j * q]  # (R, Q) support slots that become the query
        arrays = {}
        for s_name, q_name in (("support_items", "query_items"),
                               ("support_ratings", "query_ratings"),
                               ("support_mask", "query_mask")):
            sup, qry = getattr(tasks, s_name)[rows].copy(), getattr(tasks, q_name)[rows]
            arrays[q_name] = np.take_along_axis(sup, block, axis=1)
            np.put_along_axis(sup, block, qry, axis=1)
            arrays[s_name] = sup
        parts.append(TaskArrays(user_ids=tasks.user_ids[rows], user_row=tasks.user_row[rows],
                                **arrays))
    return TaskArrays(**{f: np.concatenate([getattr(p, f) for p in parts])
                         for f in ("user_ids", "user_row", "support_items", "support_ratings",
                                   "support_mask", "query_items", "query_ratings",
                                   "query_mask")})
