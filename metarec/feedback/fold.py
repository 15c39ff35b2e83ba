"""Ingested feedback inside the DVC-tracked data directory, and its merge into the tables.

``data/<feedback.folder>/`` (default ``data/feedback/``) holds, beside the source dataset:

- ``events.csv``: every event folded in so far (seq, event_id, user_id, item_id, rating,
  timestamp, user_features as JSON), in store order;
- ``quarantine.csv``: every event the contract refused, with its ``reason``;
- ``watermark.json``: the store ``seq`` up to which events were read, with counts and one
  entry per ingest (so a model version's data hash tells exactly which events it saw).

`metarec data prepare` reads the source as usual and then :func:`fold_feedback` merges the
events: a (user, item) pair rated again is replaced by its newest rating (event time, then
arrival), and users new to the dataset join the users table with the attributes of their
newest event that carried any (absent attributes stay missing: the encoders' "unknown").
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.data.tables import CanonicalTables

EVENTS_FILE = "events.csv"
QUARANTINE_FILE = "quarantine.csv"
WATERMARK_FILE = "watermark.json"
EVENT_COLUMNS = ("seq", "event_id", "user_id", "item_id", "rating", "timestamp",
                 "user_features")
QUARANTINE_COLUMNS = (*EVENT_COLUMNS, "reason")
_DTYPES = {"seq": "int64", "event_id": "str", "user_id": "int64", "item_id": "int64",
           "rating": "float64", "timestamp": "int64", "user_features": "object"}


@dataclass(frozen=True)
class Watermark:
    """How far the store has been folded into this data version."""

    seq: int = 0
    events: int = 0
    quarantined: int = 0
    ingests: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "events": self.events, "quarantined": self.quarantined,
                "ingests": list(self.ingests)}


def read_watermark(folder: str | Path) -> Watermark:
    """The watermark of a feedback folder (zero when nothing was ever ingested)."""
    path = Path(folder) / WATERMARK_FILE
    if not path.exists():
        return Watermark()
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Watermark(int(raw["seq"]), int(raw["events"]), int(raw["quarantined"]),
                     tuple(raw.get("ingests", ())))


def read_events(folder: str | Path, name: str = EVENTS_FILE) -> pd.DataFrame:
    """``events.csv`` (or ``quarantine.csv``) of a feedback folder; empty when absent."""
    path = Path(folder) / name
    columns = QUARANTINE_COLUMNS if name == QUARANTINE_FILE else EVENT_COLUMNS
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "str")) for c in columns})
    frame = pd.read_csv(path, dtype={"event_id": str, "user_features": object, "reason": str},
                        keep_default_na=False, na_values={"user_features": [""]})
    frame["user_features"] = frame["user_features"].astype(object).where(
        frame["user_features"].notna(), None)
    return frame.astype({c: t for c, t in _DTYPES.items() if t != "object"})


def events_csv(frame: pd.DataFrame, columns: tuple[str, ...] = EVENT_COLUMNS) -> bytes:
    """Deterministic CSV bytes (same events, same bytes: the DVC md5 only moves on news)."""
    out = frame.loc[:, list(columns)].sort_values("seq", kind="stable")
    buf = io.StringIO()
    out.to_csv(buf, index=False, lineterminator="\n", float_format="%.6g")
    return buf.getvalue().encode("utf-8")


def _feature_value(raw: Any, numeric: bool) -> Any:
    if raw is None:
        return np.nan if numeric else None
    if numeric:
        try:
            return float(raw)
        except (TypeError, ValueError):
            return np.nan
    return str(raw)


def new_users(events: pd.DataFrame, known: set[int], user_categorical: tuple[str, ...],
              user_numeric: tuple[str, ...]) -> pd.DataFrame:
    """Rows for the users of ``events`` not in ``known``: the attributes of each one's newest
    event that carried any (by seq), missing where none did."""
    fresh = events[~events["user_id"].isin(known)]
    ids = sorted(int(u) for u in fresh["user_id"].unique())
    rows = {u: {} for u in ids}
    for _, ev in fresh.sort_values("seq", kind="stable").iterrows():
        if ev["user_features"]:
            rows[int(ev["user_id"])] = json.loads(ev["user_features"])
    frame = pd.DataFrame({"user_id": np.array(ids, dtype="int64")})
    for col in user_categorical:
        frame[col] = pd.Series([_feature_value(rows[u].get(col), False) for u in ids],
                               dtype=object)
    for col in user_numeric:
        frame[col] = pd.Series([_feature_value(rows[u].get(col), True) for u in ids],
                               dtype="float64")
    return frame


def fold_feedback(tables: CanonicalTables, folder: str | Path) -> CanonicalTables:
    """``tables`` with the ingested events of ``folder`` merged in (unchanged when there are
    none): newest rating per (user, item), new users appended."""
    events = read_events(folder)
    if events.empty:
        return tables
    latest = (events.sort_values(["timestamp", "seq"], kind="stable")
              .drop_duplicates(["user_id", "item_id"], keep="last"))
    base = tables.interactions
    pairs = pd.MultiIndex.from_frame(latest[["user_id", "item_id"]])
    kept = base[~pd.MultiIndex.from_frame(base[["user_id", "item_id"]]).isin(pairs)]
    inter = pd.concat([kept, latest[["user_id", "item_id", "rating", "timestamp"]]],
                      ignore_index=True).astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"})
    inter = inter.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    spec = tables.spec
    added = new_users(events,
                      set(tables.users["user_id"].astype("int64")),
                      tuple(c for c in spec.user_categorical if c in tables.users.columns),
                      tuple(c for c in spec.user_numeric if c in tables.users.columns))
    users = tables.users
    if len(added):
        users = pd.concat([users, added[[c for c in added.columns if c in users.columns]]],
                          ignore_index=True).sort_values("user_id", kind="stable")
    return CanonicalTables(inter.reset_index(drop=True), users.reset_index(drop=True),
                           tables.items, tables.spec, tables.name)
