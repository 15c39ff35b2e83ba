"""Dense array contracts between features, tasks and the models.

:class:`FeatureArrays` describes every user and item as integer indices (plus the language-model
text embedding of each item); :class:`TaskArrays` describes a set of few-shot tasks padded to
fixed shapes with masks, so a batch of tasks is a handful of dense tensors ready for ``vmap``.

Index conventions (shared by encoders, models and the ONNX export):
- categorical fields (and bucketed numeric ones): index 0 is "unknown"/unseen, 1.. are values;
- multi-valued fields (attribute bags): index 0 is padding, 1 is "unknown", 2.. are values;
- users and items are rows 0..U-1 / 0..I-1 of these arrays; ``user_ids``/``item_ids`` map rows
  back to the canonical ids. Padded task slots point at item row 0 with mask 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class FeatureArrays:
    """Encoded features of all users and items.

    Shapes: ``user_cat`` (U, Fu) int64; ``item_cat`` (I, Fi) int64; ``item_multi[name]`` (I, L)
    int64; ``item_text`` (I, D) float32. ``*_cardinality`` gives each field's vocabulary size
    including its reserved slots, in column order.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_cat: np.ndarray
    user_fields: tuple[str, ...]
    user_cardinality: tuple[int, ...]
    item_cat: np.ndarray
    item_fields: tuple[str, ...]
    item_cardinality: tuple[int, ...]
    item_multi: dict[str, np.ndarray] = field(default_factory=dict)
    item_multi_cardinality: dict[str, int] = field(default_factory=dict)
    item_text: np.ndarray | None = None


@dataclass
class TaskArrays:
    """N few-shot tasks, padded: support size S, query size Q (both fixed across tasks).

    Shapes: ``user_row`` (N,) int64 row into FeatureArrays.user_cat; ``support_items`` (N, S)
    int64 item rows; ``support_ratings`` (N, S) float32; ``support_mask`` (N, S) bool;
    ``query_items``/``query_ratings``/``query_mask`` likewise (N, Q). ``user_ids`` (N,) gives
    the canonical user id of each task.

    Implicit feedback (``data.feedback: implicit``, :mod:`metarec.data.implicit`): the rating
    arrays hold labels, 1.0 for a positive (an interaction) and 0.0 for a sampled negative, and
    ``support_weights``/``query_weights`` (N, S)/(N, Q) float32 hold each slot's confidence
    weight (1.0 for negatives). Explicit tasks have no weights (None): :attr:`implicit` tells.
    """

    user_ids: np.ndarray
    user_row: np.ndarray
    support_items: np.ndarray
    support_ratings: np.ndarray
    support_mask: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray
    query_mask: np.ndarray
    support_weights: np.ndarray | None = None
    query_weights: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.user_row.shape[0])

    @property
    def implicit(self) -> bool:
        """True for implicit-feedback tasks (labels and weights, sampled negatives)."""
        return self.support_weights is not None

    def subset(self, index: np.ndarray) -> "TaskArrays":
        """The tasks at ``index`` (a slice of rows of every array)."""
        return TaskArrays(**{k: None if v is None else v[index] for k, v in self.__dict__.items()})


def rows_of(ids: np.ndarray, table_ids: np.ndarray, what: str) -> np.ndarray:
    """Row of each id in the sorted ``table_ids``; an id not there is an error."""
    if len(table_ids) == 0:
        bad = np.ones(len(ids), dtype=bool)
        pos = np.zeros(len(ids), dtype=np.int64)
    else:
        pos = np.minimum(np.searchsorted(table_ids, ids), len(table_ids) - 1)
        bad = table_ids[pos] != ids
    if bad.any():
        raise ValueError(f"{int(bad.sum())} {what} id(s) have no feature row, e.g. "
                         f"{ids[bad][0]}; rebuild features from the same tables")
    return pos.astype(np.int64)



def user_groups(interactions: "pd.DataFrame", features: FeatureArrays, *, query_size: int, support_width: int,
                what: str = "ratings") -> tuple[np.ndarray, ...]:
    """The interactions (user_id, item_id, rating) grouped by user for task building: (users,
    starts, sizes, item rows, values), sorted by user then item. A user with no more than
    ``query_size`` ``what`` is an error, as are widths below 1 and items without features."""
    if query_size < 1 or support_width < 1:
        raise ValueError(f"query_size and support_width must be >= 1, got {query_size}, "
                         f"{support_width}")
    inter = interactions.sort_values(["user_id", "item_id"], kind="mergesort")
    users, starts, sizes = np.unique(inter["user_id"].to_numpy(np.int64), return_index=True,
                                     return_counts=True)
    if len(users) and sizes.min() <= query_size:
        raise ValueError(f"user {users[sizes.argmin()]} has {sizes.min()} {what}; a task needs "
                         f"more than query_size={query_size}")
    item_rows = rows_of(inter["item_id"].to_numpy(np.int64), features.item_ids, "item")
    return users, starts, sizes, item_rows, inter["rating"].to_numpy(np.float32)


def support_quota(tasks: TaskArrays, shots: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) positives and (N,) negatives each task keeps with ``shots`` support ratings.

    Explicit tasks: ``shots`` of any rating, no negatives. Implicit tasks: ``shots`` positives
    (the interactions a user brings) and the task's own share of sampled negatives for them,
    round(shots * negatives / positives) of its support (so 0 shots keep nothing).
    """
    mask = tasks.support_mask.astype(bool)
    if not tasks.implicit:
        return np.full(len(tasks), shots, np.int64), np.zeros(len(tasks), np.int64)
    pos = (mask & (tasks.support_ratings > 0)).sum(1)
    neg = (mask & (tasks.support_ratings <= 0)).sum(1)
    keep_pos = np.minimum(pos, shots)
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 0.0)
    return keep_pos.astype(np.int64), np.minimum(neg, np.rint(keep_pos * ratio)).astype(np.int64)


def pick_support(tasks: TaskArrays, shots: int, seed: int) -> np.ndarray:
    """(N, S) bool: a seeded random choice of the support slots kept with ``shots`` ratings
    (:func:`support_quota`; implicit tasks choose positives and negatives apart)."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    rng = np.random.default_rng(seed)
    mask = tasks.support_mask.astype(bool)
    keys = rng.random(mask.shape)
    n_pos, n_neg = support_quota(tasks, shots)
    if not tasks.implicit:
        groups = [(mask, n_pos)]
    else:
        positive = tasks.support_ratings > 0
        groups = [(mask & positive, n_pos), (mask & ~positive, n_neg)]
    kept = np.zeros_like(mask)
    for members, quota in groups:
        k = np.where(members, keys, np.inf)
        rank = np.argsort(np.argsort(k, axis=1, kind="stable"), axis=1, kind="stable")
        kept |= members & (rank < quota[:, None])
    return kept


def limit_support(tasks: TaskArrays, shots: int, seed: int) -> TaskArrays:
    """``tasks`` keeping at most ``shots`` real support ratings each (a seeded random choice;
    implicit tasks: ``shots`` positives and their share of negatives, :func:`support_quota`)."""
    kept = pick_support(tasks, shots, seed)
    out = TaskArrays(**tasks.__dict__)
    out.support_mask = kept.astype(tasks.support_mask.dtype)
    return out
