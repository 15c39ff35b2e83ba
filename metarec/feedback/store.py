"""The durable event store: SQLite in WAL mode (default, a file beside mlflow.db) or PostgreSQL.

One table, ``feedback_events``: ``seq`` (the store's append order, 1, 2, ...), ``event_id``
(unique: an id seen before is ignored, so a client may retry), the rating and when it was
received. A batch is one transaction: every event of it is stored or none is. Writers are
serialised (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so
``seq`` order is commit order and an ingest up to a watermark never skips an event that
commits later with a smaller ``seq``.

Which store: ``METAREC_FEEDBACK_URI`` when set, else ``feedback.store_uri`` of params.yaml:
``sqlite:///feedback.db`` (relative to the working directory), ``sqlite:////abs/path.db``, or
``postgresql://user:pass@host:5432/db`` (``postgresql+psycopg2://`` is accepted too; needs
psycopg2 from the `scale` extra). Connections are per thread and per process (safe under
uvicorn workers and FastAPI's thread pool).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from metarec.config import FeedbackConfig
from metarec.feedback.events import Event

STORE_ENV = "METAREC_FEEDBACK_URI"
TABLE = "feedback_events"
COLUMNS = ("seq", "event_id", "user_id", "item_id", "rating", "timestamp", "user_features",
           "received_at")
_LOCK_KEY = 7_301_117  # advisory lock id of metarec's writers (PostgreSQL)
_CHUNK = 500  # ids per IN (...) lookup
_SQLITE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "event_id TEXT NOT NULL UNIQUE, user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, "
    "rating REAL NOT NULL, \"timestamp\" INTEGER NOT NULL, user_features TEXT, "
    "received_at REAL NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_user ON {TABLE} (user_id, seq)")
_PG_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (seq BIGSERIAL PRIMARY KEY, "
    "event_id TEXT NOT NULL UNIQUE, user_id BIGINT NOT NULL, item_id BIGINT NOT NULL, "
    "rating DOUBLE PRECISION NOT NULL, \"timestamp\" BIGINT NOT NULL, user_features TEXT, "
    "received_at DOUBLE PRECISION NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_user ON {TABLE} (user_id, seq)")


class StoreError(RuntimeError):
    """The event store cannot be opened or written (the message names the store)."""


@dataclass(frozen=True)
class AddResult:
    """What one batch did: how many events were new, and the ids already stored (ignored)."""

    received: int
    added: int
    duplicates: tuple[str, ...]
    last_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"received": self.received, "added": self.added,
                "duplicates": list(self.duplicates), "last_seq": self.last_seq}


@dataclass(frozen=True)
class StoredRating:
    """One rating of a user's profile."""

    item_id: int
    rating: float
    timestamp: int
    event_id: str
    seq: int


def store_uri(cfg: FeedbackConfig) -> str:
    """``METAREC_FEEDBACK_URI`` when set, else ``feedback.store_uri``."""
    return os.environ.get(STORE_ENV, "").strip() or cfg.store_uri


class EventStore:
    """Append-only rating events with idempotent ids, on SQLite (WAL) or PostgreSQL."""

    def __init__(self, uri: str):
        self.uri = uri
        if uri.startswith("sqlite:///"):
            self.kind = "sqlite"
            self._path = Path(uri[len("sqlite:///"):])
            if not self._path.name:
                raise StoreError(f"{uri}: expected sqlite:///FILE")
            self._path.parent.mkdir(parents=True, exist_ok=True)
        elif uri.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            self.kind = "postgresql"
            self._dsn = "postgresql://" + uri.split("://", 1)[1]
        else:
            raise StoreError(f"{uri!r}: the event store must be sqlite:///FILE or "
                             "postgresql://... (feedback.store_uri / METAREC_FEEDBACK_URI)")
        self._local = threading.local()
        self._create_schema()

    @classmethod
    def from_config(cls, cfg: FeedbackConfig) -> "EventStore":
        return cls(store_uri(cfg))

    def __repr__(self) -> str:
        return f"EventStore({self.describe()})"

    def describe(self) -> str:
        """The store without credentials: the SQLite file or the PostgreSQL host/database."""
        if self.kind == "sqlite":
            return f"sqlite {self._path}"
        return "postgresql " + self._dsn.split("@", 1)[-1].split("://", 1)[-1]

    # ------------------------------------------------------------------ connections
    def _connect(self) -> Any:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        try:
            import psycopg2
        except ImportError:
            raise StoreError("a PostgreSQL event store needs psycopg2 (pip install -e "
                             "'.[scale]')") from None
        try:
            return psycopg2.connect(self._dsn, connect_timeout=10)
        except psycopg2.Error as exc:
            raise StoreError(f"cannot connect to the event store ({self.describe()}): "
                             f"{str(exc).strip()}") from None

    def _conn(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or getattr(local, "conn", None) is None:
            local.conn, local.pid = self._connect(), os.getpid()
        return local.conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.kind == "postgresql" else text

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A writing transaction holding the writers' lock; rolled back on any error."""
        conn = self._conn()
        cur = conn.cursor()
        try:
            if self.kind == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            else:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            yield cur
            conn.commit() if self.kind == "postgresql" else cur.execute("COMMIT")
        except BaseException:
            try:
                conn.rollback()
            finally:
                cur.close()
                if self.kind == "postgresql":
                    self.close()  # a connection that failed mid-transaction is not reused
            raise
        cur.close()

    def _create_schema(self) -> None:
        with self._write() as cur:
            for statement in (_SQLITE_DDL if self.kind == "sqlite" else _PG_DDL):
                cur.execute(statement)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            rows = cur.fetchall()
            if self.kind == "postgresql":
                conn.rollback()  # end the read transaction (no idle-in-transaction sessions)
            return rows
        finally:
            cur.close()

    # ------------------------------------------------------------------ writing
    def add(self, events: Sequence[Event], received_at: float | None = None) -> AddResult:
        """Store a validated batch in one transaction; ids already stored (or repeated within
        the batch) are ignored and reported as duplicates."""
        received_at = time.time() if received_at is None else received_at
        with self._write() as cur:
            seen: set[str] = set()
            ids = list(dict.fromkeys(e.event_id for e in events))
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cur.execute(self._sql(f"SELECT event_id FROM {TABLE} WHERE event_id IN "
                                      f"({marks})"), chunk)
                seen.update(r[0] for r in cur.fetchall())
            duplicates, rows = [], []
            for e in events:
                if e.event_id in seen:
                    duplicates.append(e.event_id)
                    continue
                seen.add(e.event_id)
                rows.append((e.event_id, e.user_id, e.item_id, e.rating, e.timestamp,
                             e.features_json, received_at))
            if rows:
                cur.executemany(self._sql(
                    f"INSERT INTO {TABLE} (event_id, user_id, item_id, rating, \"timestamp\", "
                    "user_features, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"), rows)
            cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}")
            last = int(cur.fetchone()[0])
        return AddResult(len(events), len(rows), tuple(duplicates), last)

    # ------------------------------------------------------------------ reading
    def max_seq(self) -> int:
        """The newest event's ``seq`` (0 when the store is empty)."""
        return int(self._read(f"SELECT COALESCE(MAX(seq), 0) FROM {TABLE}")[0][0])

    def count(self) -> int:
        return int(self._read(f"SELECT COUNT(*) FROM {TABLE}")[0][0])

    def events(self, after: int = 0, upto: int | None = None) -> pd.DataFrame:
        """Events with ``after < seq <= upto`` (all newer ones when ``upto`` is None), in
        ``seq`` order, as a frame with the store's columns."""
        upto = self.max_seq() if upto is None else upto
        rows = self._read(f"SELECT {', '.join(_q(c) for c in COLUMNS)} FROM {TABLE} "
                          "WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upto))
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        return frame.astype({"seq": "int64", "event_id": "str", "user_id": "int64",
                             "item_id": "int64", "rating": "float64", "timestamp": "int64",
                             "received_at": "float64"})

    def user_ratings(self, user_id: int, limit: int | None = None) -> list[StoredRating]:
        """The user's profile: one rating per item (the newest by timestamp, then arrival),
        newest first, at most ``limit``."""
        rows = self._read(f"SELECT item_id, rating, \"timestamp\", event_id, seq FROM {TABLE} "
                          "WHERE user_id = ? ORDER BY \"timestamp\" DESC, seq DESC", (user_id,))
        out: dict[int, StoredRating] = {}
        for item, rating, ts, eid, seq in rows:
            if item not in out:
                out[item] = StoredRating(int(item), float(rating), int(ts), str(eid), int(seq))
            if limit is not None and len(out) >= limit:
                break
        return list(out.values())

    def user_features(self, user_id: int) -> dict[str, Any]:
        """The attributes of the user's newest event that carried any ({} when none did)."""
        rows = self._read(f"SELECT user_features FROM {TABLE} WHERE user_id = ? AND "
                          "user_features IS NOT NULL ORDER BY seq DESC LIMIT 1", (user_id,))
        return json.loads(rows[0][0]) if rows else {}


def _q(column: str) -> str:
    return f'"{column}"' if column == "timestamp" else column
