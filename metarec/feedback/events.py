"""Rating events as they arrive (POST /feedback, `metarec feedback add`), and their validation.

An event is one rating a user gave: ``event_id`` (the client's unique id, so a retry is
recognised and ignored), ``user_id``, ``item_id``, ``rating``, ``timestamp`` (Unix seconds;
the receiving clock when omitted) and optional ``user_features`` (a user's attributes, used
when the user is new to the dataset). A batch is checked whole before anything is stored: the
first malformed field raises :class:`EventError`, which names it (``events[3].rating``) and says
what is wrong, and nothing of the batch is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from metarec.config import FeedbackConfig, ValidationConfig

FIELDS = ("event_id", "user_id", "item_id", "rating", "timestamp", "user_features")
REQUIRED = ("event_id", "user_id", "item_id", "rating")
MAX_ID_CHARS = 128
MAX_FEATURES = 32
MAX_FEATURE_CHARS = 256
INT64 = (-(2**63), 2**63 - 1)


class EventError(ValueError):
    """A malformed event; ``field`` is its location (``events[3].rating``), ``index`` the event's
    position in the batch."""

    def __init__(self, field: str, message: str, index: int | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.index = index


@dataclass(frozen=True)
class Event:
    """One rating event, validated; ``user_features`` as a JSON object's items (sorted)."""

    event_id: str
    user_id: int
    item_id: int
    rating: float
    timestamp: int
    user_features: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @property
    def features_json(self) -> str | None:
        """``user_features`` as compact JSON with sorted keys, or None when there are none."""
        if not self.user_features:
            return None
        return json.dumps(dict(self.user_features), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "user_id": self.user_id, "item_id": self.item_id,
                "rating": self.rating, "timestamp": self.timestamp,
                "user_features": dict(self.user_features) or None}


@dataclass(frozen=True)
class IntakeRules:
    """What an event must satisfy to be stored: the dataset's rating scale and time range."""

    rating_min: float = 1.0
    rating_max: float = 5.0
    implicit: bool = False
    timestamp_min: int = 631152000  # 1990-01-01
    max_future_s: int = 300

    @classmethod
    def from_config(cls, validation: ValidationConfig, feedback: FeedbackConfig) -> "IntakeRules":
        start = datetime.fromisoformat(validation.timestamp_min).replace(tzinfo=timezone.utc)
        return cls(validation.rating_min, validation.rating_max, validation.implicit,
                   int(start.timestamp()), feedback.max_future_s)


def _int(value: Any, where: str, index: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(where, f"expected an integer, got {value!r:.60}", index)
    if not INT64[0] <= value <= INT64[1]:
        raise EventError(where, f"{value} does not fit in int64", index)
    return value


def _timestamp(value: Any, where: str, index: int | None, rules: IntakeRules,
               now: float) -> int:
    if value is None:
        return int(now)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise EventError(where, f"expected Unix seconds or an ISO 8601 time, got "
                                    f"{value!r:.60}", index) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        seconds = int(parsed.timestamp())
    else:
        seconds = _int(value, where, index)
    if seconds < rules.timestamp_min:
        raise EventError(where, f"{seconds} is before {rules.timestamp_min} "
                                "(validation.timestamp_min)", index)
    if seconds > now + rules.max_future_s:
        raise EventError(where, f"{seconds} lies in the future (now {int(now)}, "
                                f"feedback.max_future_s {rules.max_future_s})", index)
    return seconds


def _rating(value: Any, where: str, index: int | None, rules: IntakeRules) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(where, f"expected a number, got {value!r:.60}", index)
    value = float(value)
    if not math.isfinite(value):
        raise EventError(where, f"{value} is not a finite number", index)
    if rules.implicit:
        if value not in (0.0, 1.0):
            raise EventError(where, f"{value:g} is not 0 or 1 (validation.implicit)", index)
    elif not rules.rating_min <= value <= rules.rating_max:
        raise EventError(where, f"{value:g} is outside [{rules.rating_min:g}, "
                                f"{rules.rating_max:g}]", index)
    return value


def _event_id(value: Any, where: str, index: int | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EventError(where, f"expected a non-empty string, got {value!r:.60}", index)
    if len(value) > MAX_ID_CHARS or not value.isprintable() or value != value.strip():
        raise EventError(where, f"must be at most {MAX_ID_CHARS} printable characters without "
                                "surrounding blanks", index)
    return value


def _features(value: Any, where: str, index: int | None) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise EventError(where, f"expected an object of user attributes, got {value!r:.60}",
                         index)
    if len(value) > MAX_FEATURES:
        raise EventError(where, f"{len(value)} attributes, at most {MAX_FEATURES}", index)
    out = []
    for key, v in value.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise EventError(f"{where}.{key}", "attribute names are strings of 1..64 characters",
                             index)
        ok = v is None or isinstance(v, str) or (isinstance(v, (int, float))
                                                  and not isinstance(v, bool)
                                                  and math.isfinite(v))
        if not ok or (isinstance(v, str) and len(v) > MAX_FEATURE_CHARS):
            raise EventError(f"{where}.{key}", f"expected a string (at most {MAX_FEATURE_CHARS} "
                                               f"characters), a finite number or null, got "
                                               f"{v!r:.60}", index)
        out.append((key, v))
    return tuple(sorted(out))


def parse_event(raw: Any, rules: IntakeRules, *, where: str = "event", index: int | None = None,
                now: float | None = None) -> Event:
    """One JSON-like mapping -> :class:`Event`, or :class:`EventError` naming the field."""
    now = time.time() if now is None else now
    if not isinstance(raw, Mapping):
        raise EventError(where, f"expected an object, got {type(raw).__name__}", index)
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise EventError(f"{where}.{unknown[0]}", f"unknown field (fields: {', '.join(FIELDS)})",
                         index)
    for name in REQUIRED:
        if raw.get(name) is None:
            raise EventError(f"{where}.{name}", "required field missing", index)
    return Event(event_id=_event_id(raw["event_id"], f"{where}.event_id", index),
                 user_id=_int(raw["user_id"], f"{where}.user_id", index),
                 item_id=_int(raw["item_id"], f"{where}.item_id", index),
                 rating=_rating(raw["rating"], f"{where}.rating", index, rules),
                 timestamp=_timestamp(raw.get("timestamp"), f"{where}.timestamp", index, rules,
                                      now),
                 user_features=_features(raw.get("user_features"), f"{where}.user_features",
                                         index))


def parse_events(raw: Sequence[Any], rules: IntakeRules, *, max_batch: int | None = None,
                 now: float | None = None, where: str = "events") -> list[Event]:
    """A batch of mappings -> events; the first malformed one raises (nothing is returned)."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise EventError(where, f"expected a list of events, got {type(raw).__name__}")
    if not raw:
        raise EventError(where, "empty batch: no events")
    if max_batch is not None and len(raw) > max_batch:
        raise EventError(where, f"{len(raw)} events in one batch, at most {max_batch} "
                                "(feedback.max_batch)")
    now = time.time() if now is None else now
    return [parse_event(r, rules, where=f"{where}[{i}]", index=i, now=now)
            for i, r in enumerate(raw)]


# --------------------------------------------------------------------------- files (the CLI)


def _typed_cell(column: str, text: str) -> Any:
    """A CSV cell as JSON would carry it: ints, numbers and JSON objects typed, blanks None."""
    text = text.strip()
    if text == "":
        return None
    if column in ("user_id", "item_id", "timestamp"):
        return int(text) if text.lstrip("+-").isdigit() else text
    if column == "rating":
        try:
            return float(text)
        except ValueError:
            return text
    if column == "user_features":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def read_event_records(text: str, fmt: str, source: str = "input") -> list[dict[str, Any]]:
    """The records of a CSV (header row naming the fields; ``user_features`` a JSON object
    cell) or JSON-lines text, as mappings for :func:`parse_events`. Unparseable lines raise
    :class:`EventError` naming the line."""
    if fmt == "jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EventError(f"{source} line {n}", f"not valid JSON ({exc.msg})") from None
        return records
    if fmt != "csv":
        raise ValueError(f"format {fmt!r}: expected csv or jsonl")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise EventError(source, "empty file: no header row")
    unknown = [c for c in reader.fieldnames if c not in FIELDS]
    if unknown:
        raise EventError(f"{source} header", f"unknown column(s) {unknown} (fields: "
                                             f"{', '.join(FIELDS)})")
    records = []
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            raise EventError(f"{source} line {reader.line_num}",
                             f"more cells than the header's {len(reader.fieldnames)} columns")
        records.append({k: _typed_cell(k, v or "") for k, v in row.items()})
    return records


def event_records(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]
