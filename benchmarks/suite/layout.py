"""The generic CSV layout every suite variant writes, and the params that make metarec read it.

A variant folder holds ``interactions.csv`` (user_id, item_id, rating, timestamp),
``users.csv`` (user_id + feature columns) and ``items.csv`` (item_id, title, feature columns,
``about``: the rest of the item text). :func:`csv_params` gives the params.yaml overrides
(``data.dataset: csv`` + ``data.csv`` + the ``validation`` rating range + the ``tasks``
window) that read it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FILES = {"interactions": "interactions.csv", "users": "users.csv", "items": "items.csv"}
MULTI_SEP = "|"


@dataclass(frozen=True)
class Variant:
    """A written dataset variant: its folder, the params overrides that read it, and extras.

    ``truth``: a file of known generating parameters (lowrank: ``truth.npz``), or None.
    ``stats``: sizes and rule parameters, for reports.
    """

    name: str
    folder: Path
    params: dict[str, Any]
    truth: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def write_csv_dataset(folder: Path, interactions: pd.DataFrame, users: pd.DataFrame,
                      items: pd.DataFrame) -> Path:
    """Write the three CSV files into ``folder`` (list cells joined with ``|``); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    items = items.copy()
    for col in items.columns:
        if items[col].map(lambda v: isinstance(v, (list, tuple)) or hasattr(v, "tolist")).any():
            items[col] = [MULTI_SEP.join(map(str, v)) for v in items[col]]
    interactions[["user_id", "item_id", "rating", "timestamp"]].to_csv(
        folder / FILES["interactions"], index=False)
    users.to_csv(folder / FILES["users"], index=False)
    items.to_csv(folder / FILES["items"], index=False)
    return folder


def csv_params(*, rating_min: float, rating_max: float, min_ratings: int, max_ratings: int,
               user_categorical=(), user_numeric=(), item_categorical=(), item_numeric=(),
               item_multi=(), item_text=("about",), extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """params.yaml overrides that read a variant folder through ``data.dataset: csv``."""
    params: dict[str, Any] = {
        "data": {"dataset": "csv", "csv": {
            **FILES, "sep": ",", "multi_sep": MULTI_SEP,
            "user_categorical": list(user_categorical), "user_numeric": list(user_numeric),
            "item_categorical": list(item_categorical), "item_numeric": list(item_numeric),
            "item_multi": list(item_multi), "item_text": list(item_text)}},
        "validation": {"rating_min": float(rating_min), "rating_max": float(rating_max),
                       "implicit": False},
        "tasks": {"min_ratings": int(min_ratings), "max_ratings": int(max_ratings)},
    }
    return merge(params, extra or {})


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``over`` merged in (nested dicts merged, the rest replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
