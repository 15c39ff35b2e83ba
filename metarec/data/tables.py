"""The canonical tables every source converts to, and everything downstream reads.

- interactions: ``user_id`` (int64), ``item_id`` (int64), ``rating`` (float64; 1..5 stars, or
  0/1 for implicit data), ``timestamp`` (int64, Unix seconds; or, for a source without time,
  the row's position in the file: ``CanonicalTables.timestamps == "order"``).
- users: ``user_id`` (int64) + feature columns.
- items: ``item_id`` (int64), ``title`` (str), ``text`` (str, what the language model embeds:
  title, genres and year for MovieLens) + feature columns; multi-valued columns hold lists of str.

Which feature columns exist, and of which kind (categorical, numeric, multi-valued), is stated
by a :class:`FeatureSpec` stored beside the tables as ``schema.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.io import atomic_dir

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
INTERACTION_DTYPES = {"user_id": "int64", "item_id": "int64", "rating": "float64",
                      "timestamp": "int64"}
TABLE_FILES = {"interactions": "interactions.parquet", "users": "users.parquet",
               "items": "items.parquet"}
SCHEMA_FILE = "schema.json"


class DataSourceError(ValueError):
    """A raw dataset that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class FeatureSpec:
    """Feature columns of the users and items tables, by kind."""

    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()
    item_multi: tuple[str, ...] = ()

    @property
    def user_columns(self) -> tuple[str, ...]:
        return self.user_categorical + self.user_numeric

    @property
    def item_columns(self) -> tuple[str, ...]:
        return self.item_categorical + self.item_numeric + self.item_multi

    @classmethod
    def from_dict(cls, raw: dict) -> "FeatureSpec":
        return cls(**{k: tuple(v) for k, v in raw.items()})


@dataclass
class CanonicalTables:
    """One dataset in canonical form. ``users``/``items`` may be empty frames with just ids."""

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name: str = "dataset"
    # "unix": timestamps are Unix seconds; "order": the source had no time and ``timestamp`` is
    # each row's position in its file (orders a user's ratings, says nothing of when).
    timestamps: str = "unix"

    def summary(self) -> dict[str, int]:
        return {"interactions": len(self.interactions), "users": len(self.users),
                "items": len(self.items)}


def write_tables(tables: CanonicalTables, dest: str | Path) -> Path:
    """Write the tables as Parquet plus schema.json into ``dest``, atomically."""
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        for key, fname in TABLE_FILES.items():
            getattr(tables, key).to_parquet(tmp / fname, index=False)
        payload = {"name": tables.name, "spec": asdict(tables.spec)}
        if tables.timestamps != "unix":  # only then: schema.json of timed data stays as it was
            payload["timestamps"] = tables.timestamps
        (tmp / SCHEMA_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return dest


def read_tables(src: str | Path) -> CanonicalTables:
    """Read tables written by :func:`write_tables`."""
    src = Path(src)
    missing = [f for f in (*TABLE_FILES.values(), SCHEMA_FILE) if not (src / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{src}: canonical tables incomplete, missing {', '.join(missing)}; "
            "run `metarec data prepare` first")
    meta = json.loads((src / SCHEMA_FILE).read_text())
    frames = {k: pd.read_parquet(src / f) for k, f in TABLE_FILES.items()}
    for col in FeatureSpec.from_dict(meta["spec"]).item_multi:
        frames["items"][col] = frames["items"][col].map(list)
    return CanonicalTables(**frames, spec=FeatureSpec.from_dict(meta["spec"]), name=meta["name"],
                           timestamps=meta.get("timestamps", "unix"))


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a table (columns, dtypes and values): its data version."""
    import hashlib

    digest = hashlib.sha256(json.dumps([list(map(str, frame.columns)),
                                        list(map(str, frame.dtypes))]).encode())
    hashable = frame.copy()
    for col in hashable.columns[hashable.dtypes == object]:  # list cells are not hashable
        hashable[col] = hashable[col].map(lambda v: json.dumps(list(v)) if isinstance(
            v, (list, tuple)) else v)
    digest.update(pd.util.hash_pandas_object(hashable, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def tables_fingerprint(tables: CanonicalTables) -> str:
    """sha256 of the tables' content (row order and dtypes of ids normalised)."""
    digest = hashlib.sha256()
    inter = tables.interactions.sort_values(["user_id", "item_id"], kind="mergesort")
    for col in ("user_id", "item_id", "rating", "timestamp"):
        digest.update(inter[col].to_numpy(dtype=np.float64 if col == "rating" else np.int64)
                      .tobytes())
    for frame, key in ((tables.users, "user_id"), (tables.items, "item_id")):
        ordered = frame.sort_values(key, kind="mergesort")
        ordered = ordered[sorted(ordered.columns)]
        digest.update(ordered.to_json(orient="split", index=False, default_handler=str)
                      .encode("utf-8"))
    digest.update(json.dumps(tables.spec.__dict__, sort_keys=True, default=list).encode())
    if tables.timestamps != "unix":
        digest.update(f"timestamps={tables.timestamps}".encode())
    return digest.hexdigest()
