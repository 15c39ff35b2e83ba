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

import numpy as np


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
    """

    user_ids: np.ndarray
    user_row: np.ndarray
    support_items: np.ndarray
    support_ratings: np.ndarray
    support_mask: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray
    query_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.user_row.shape[0])

    def subset(self, index: np.ndarray) -> "TaskArrays":
        """The tasks at ``index`` (a slice of rows of every array)."""
        return TaskArrays(**{k: v[index] for k, v in self.__dict__.items()})


def limit_support(tasks: TaskArrays, shots: int, seed: int) -> TaskArrays:
    """``tasks`` keeping at most ``shots`` real support ratings each (a seeded random choice)."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    rng = np.random.default_rng(seed)
    mask = tasks.support_mask.astype(bool)
    keys = np.where(mask, rng.random(mask.shape), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    kept = mask & (rank < shots)
    out = TaskArrays(**tasks.__dict__)
    out.support_mask = kept.astype(tasks.support_mask.dtype)
    return out
