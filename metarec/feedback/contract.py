"""The data contract on feedback events (Great Expectations 1.x), with a verdict per event.

`metarec data ingest` (and the Dagster asset ``feedback_events``) runs it on the events read
from the store: every expectation reports the ``seq`` of each event that breaks it (GX's
``unexpected_index_list``), so an event that fails any expectation is quarantined with the
reasons, and the rest is folded into the dataset. Nothing is dropped silently. The same suite,
run on the events a data version already holds, is the asset check ``events_contract``.

Expectations (one GX expectation each; derived boolean columns where GX cannot say it alone):
event id present and new; user and item ids present; the item in the dataset's catalog; the
rating on the dataset's scale (``validation``); the time after ``validation.timestamp_min`` and
not ahead of the clock by more than ``feedback.max_future_s``; the user attributes named by
the dataset's feature spec (numeric ones numbers); (user, item, time) not already a rating of
the dataset or of an earlier event (a replay under a new event id).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from metarec.config import FeedbackConfig, ValidationConfig
from metarec.data.tables import CanonicalTables
from metarec.io import write_json

log = logging.getLogger(__name__)

CONTRACT_FILE = "contract.json"


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation over the batch: how many events broke it, the first few seqs."""

    name: str
    failing: int
    seqs: tuple[int, ...]
    message: str


@dataclass
class EventVerdict:
    """The contract's verdict on a batch: accepted events, quarantined ones with reasons."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    results: list[ExpectationResult] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.quarantined.empty

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "accepted": len(self.accepted),
                "quarantined": len(self.quarantined), "evaluated": self.evaluated,
                "seconds": round(self.seconds, 3),
                "failures": [{"expectation": r.name, "failing": r.failing,
                              "seqs": list(r.seqs[:10]), "message": r.message}
                             for r in self.results if r.failing]}

    def to_text(self) -> str:
        lines = [f"events contract {'passed' if self.passed else 'quarantined events'}: "
                 f"{len(self.accepted)} accepted, {len(self.quarantined)} quarantined "
                 f"({self.evaluated} expectations)"]
        lines += [f"  {r.name}: {r.failing} event(s), e.g. seq {list(r.seqs[:5])}: {r.message}"
                  for r in self.results if r.failing]
        return "\n".join(lines)


@dataclass
class _Plan:
    frame: pd.DataFrame
    checks: list[tuple[str, Any, str]] = field(default_factory=list)  # name, expectation, msg

    def add(self, name: str, kind: str, message: str, **kwargs: Any) -> None:
        import great_expectations.expectations as gxe

        self.checks.append((name, getattr(gxe, kind)(**kwargs, meta={"metarec": name}), message))

    def flag(self, name: str, column: str, values: Iterable[Any], message: str) -> None:
        """A derived True/False/None column checked to be True (None: does not apply)."""
        self.frame[column] = pd.Series(list(values), index=self.frame.index, dtype=object)
        self.add(name, "ExpectColumnValuesToBeInSet", message, column=column, value_set=[True])


def _features_known(raw: Any, categorical: set[str], numeric: set[str]) -> bool | None:
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    try:
        features = json.loads(raw)
    except (TypeError, ValueError):
        return False
    if not isinstance(features, dict):
        return False
    for key, value in features.items():
        if key not in categorical | numeric:
            return False
        if key in numeric and value is not None and (
                isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
            return False
    return True


def _plan(events: pd.DataFrame, base: CanonicalTables, previous: pd.DataFrame,
          validation: ValidationConfig, feedback: FeedbackConfig, now: float) -> _Plan:
    plan = _Plan(events.reset_index(drop=True).copy())
    f = plan.frame
    for col in ("event_id", "user_id", "item_id", "rating", "timestamp"):
        plan.add(f"{col} present", "ExpectColumnValuesToNotBeNull", f"'{col}' is missing",
                 column=col)
    plan.flag("event id new", "_event_new", ~f["event_id"].isin(set(previous["event_id"])),
              "event id already ingested")
    catalog = set(base.items["item_id"].astype("int64"))
    plan.flag("item in catalog", "_item_known", f["item_id"].isin(catalog),
              f"item_id not in the dataset's {len(catalog)} items")
    if validation.implicit:
        plan.add("rating is 0/1", "ExpectColumnValuesToBeInSet",
                 "rating not 0 or 1 (validation.implicit)", column="rating",
                 value_set=[0.0, 1.0])
    else:
        lo, hi = validation.rating_min, validation.rating_max
        plan.add("rating in range", "ExpectColumnValuesToBeBetween",
                 f"rating outside [{lo:g}, {hi:g}] (validation.rating_min/max)",
                 column="rating", min_value=lo, max_value=hi)
    start = datetime.fromisoformat(validation.timestamp_min).replace(tzinfo=timezone.utc)
    plan.add("timestamp in range", "ExpectColumnValuesToBeBetween",
             f"timestamp before {validation.timestamp_min} or in the future",
             column="timestamp", min_value=int(start.timestamp()),
             max_value=int(now) + feedback.max_future_s)
    spec = base.spec
    cat, num = set(spec.user_categorical), set(spec.user_numeric)
    plan.flag("user attributes known", "_features_known",
              (_features_known(v, cat, num) for v in f["user_features"]),
              f"user_features names an attribute the dataset lacks (users have "
              f"{sorted(cat | num)}) or a numeric one is not a number")
    keys = ["user_id", "item_id", "timestamp"]
    seen = pd.concat([base.interactions[keys], previous[keys]], ignore_index=True)
    known = pd.MultiIndex.from_frame(seen.astype("int64")) if len(seen) else None
    mine = pd.MultiIndex.from_frame(f[keys].astype("int64"))
    repeat = mine.isin(known) if known is not None else pd.Series(False, index=f.index)
    plan.flag("not a repeated rating", "_first_rating",
              ~(pd.Series(repeat, index=f.index) | mine.duplicated(keep="first")),
              "(user_id, item_id, timestamp) is already a rating of the dataset or of an "
              "earlier event")
    return plan


def _run(plan: _Plan) -> list[tuple[str, str, list[int]]]:
    """Run the planned suite in an ephemeral GX context; (name, message, failing seqs)."""
    import great_expectations as gx

    from metarec.data.validation import ephemeral_context

    ctx = ephemeral_context()
    batch = ctx.data_sources.add_pandas("feedback").add_dataframe_asset(
        "events").add_batch_definition_whole_dataframe("events")
    suite = ctx.suites.add(gx.ExpectationSuite(name="events",
                                               expectations=[c[1] for c in plan.checks]))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="events", data=batch,
                                                                suite=suite))
    result = vd.run(batch_parameters={"dataframe": plan.frame}, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": ["seq"]})
    messages = {name: msg for name, _, msg in plan.checks}
    out = []
    for r in result.results:
        name = r.expectation_config.meta["metarec"]
        exc = r.exception_info if isinstance(r.exception_info, dict) else {}
        if exc.get("raised_exception"):
            raise RuntimeError(f"events contract: '{name}' could not be evaluated: "
                               f"{exc.get('exception_message')}")
        seqs = [int(row["seq"]) for row in (r.result or {}).get("unexpected_index_list") or []]
        if not r.success and not seqs:
            seqs = [int(s) for s in plan.frame["seq"]]  # a table-level failure: all of them
        out.append((name, messages[name], seqs))
    return out


def check_events(events: pd.DataFrame, base: CanonicalTables, previous: pd.DataFrame,
                 validation: ValidationConfig, feedback: FeedbackConfig,
                 now: float | None = None) -> EventVerdict:
    """The contract on ``events`` (store columns, ``seq`` unique) against the source dataset
    ``base`` and the events ``previous`` ingests already folded in."""
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    if events.empty:
        return EventVerdict(events, events.assign(reason=pd.Series(dtype=str)))
    plan = _plan(events, base, previous, validation, feedback, now)
    reasons: dict[int, list[str]] = {}
    results = []
    for name, message, seqs in _run(plan):
        results.append(ExpectationResult(name, len(seqs), tuple(seqs), message))
        for s in seqs:
            reasons.setdefault(s, []).append(f"{name}: {message}")
    bad = events["seq"].isin(reasons)
    quarantined = events[bad].assign(reason=[
        "; ".join(reasons[int(s)]) for s in events.loc[bad, "seq"]])
    verdict = EventVerdict(events[~bad], quarantined, results, len(plan.checks),
                           time.perf_counter() - t0)
    log.log(logging.INFO if verdict.passed else logging.WARNING, "%s", verdict.to_text())
    return verdict


def write_contract(verdict: EventVerdict, out_dir: str | Path,
                   extra: dict[str, Any] | None = None) -> Path:
    """The verdict (and the quarantined events with reasons) as ``contract.json``."""
    path = Path(out_dir) / CONTRACT_FILE
    payload = {**verdict.to_dict(), **(extra or {}), "quarantine": [
        {"seq": int(r.seq), "event_id": r.event_id, "reason": r.reason}
        for r in verdict.quarantined.itertuples()][:1000]}
    write_json(path, payload)
    return path

