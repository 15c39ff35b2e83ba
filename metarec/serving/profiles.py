"""Feedback in, profiles out: POST /feedback, GET /users/{id}, and the stored ratings that
POST /recommend merges in when a request names its ``user_id``.

Events go to the event store (metarec.feedback.store: SQLite WAL by default, PostgreSQL when
configured) exactly as `metarec feedback add` stores them: a batch whole or not at all, event
ids already stored ignored, a malformed event a 422 naming its field. A user's profile is their
newest rating per item (newest first); /recommend uses the newest ``serve.max_ratings`` minus
the request's own, the request's rating winning for an item in both, so a rating posted to
/feedback changes the very next recommendation (the graph adapts to it). Stored items the
served model does not know (added to the catalog after it was trained) are left out and named.
The store is opened on first use in each worker (a server that never takes feedback writes
no file).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from metarec.config import FeedbackConfig, ValidationConfig
from metarec.feedback.events import EventError, IntakeRules, parse_events


@dataclass
class Profiles:
    """The event store behind the feedback and profile endpoints of one worker."""

    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    _store: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rules(self) -> IntakeRules:
        return IntakeRules.from_config(self.validation, self.feedback)

    @property
    def store(self):
        with self._lock:
            if self._store is None:
                from metarec.feedback.store import EventStore

                self._store = EventStore.from_config(self.feedback)
            return self._store

    def add(self, raw_events: list[Any]) -> dict[str, Any]:
        """Validate and store one batch; :class:`EventError` names the first bad field."""
        events = parse_events(raw_events, self.rules, max_batch=self.feedback.max_batch)
        return self.store.add(events).to_dict()

    def profile(self, user_id: int, limit: int) -> dict[str, Any]:
        ratings = self.store.user_ratings(user_id)
        return {"user_id": user_id, "features": self.store.user_features(user_id),
                "total": len(ratings),
                "ratings": [{"item_id": r.item_id, "rating": r.rating,
                             "timestamp": r.timestamp, "event_id": r.event_id}
                            for r in ratings[:limit]]}

    def support(self, user_id: int, request_ratings: Mapping[str, float],
                user: Mapping[str, Any] | None, known_items: Mapping[int, int],
                max_ratings: int, fields: tuple[str, ...]) -> tuple[dict[str, float], dict[str, Any] | None,
                                           dict[str, Any]]:
        """(ratings, user attributes, note): the request's ratings plus the newest stored ones
        (known to the model, not in the request) up to ``max_ratings``; the stored attributes
        (those the model has) under the request's own."""
        own = {int(str(k).strip()) for k in request_ratings if str(k).strip().lstrip("-")
               .isdigit()}
        merged = dict(request_ratings)
        room = max_ratings - len(merged)
        used, unknown = 0, []
        for r in self.store.user_ratings(user_id):
            if r.item_id in own:
                continue
            if r.item_id not in known_items:
                unknown.append(r.item_id)
                continue
            if used >= room:
                break
            merged[str(r.item_id)] = r.rating
            used += 1
        stored = {k: v for k, v in self.store.user_features(user_id).items() if k in fields}
        attrs = {**stored, **dict(user or {})} if (stored or user) else None
        note = {"user_id": user_id, "stored_ratings_used": used,
                "unknown_items_skipped": sorted(unknown)[:20]}
        return merged, attrs, note


def event_error_detail(exc: EventError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape for an :class:`EventError`: the location as a list of keys."""
    loc: list[Any] = ["body"]
    for part in exc.field.replace("]", "").split("."):
        name, _, index = part.partition("[")
        loc += [name] + ([int(index)] if index.isdigit() else [])
    return [{"loc": loc, "msg": exc.message, "type": "value_error"}]
