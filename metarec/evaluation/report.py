"""The evaluation report: a candidate beside its baselines per scenario, as JSON and markdown.

:class:`MethodResult` is one method on one scenario; :func:`build_report` assembles them into a
:class:`Report`, which round-trips through JSON (:meth:`Report.to_dict` /
:meth:`Report.from_dict`) and renders as markdown tables (:meth:`Report.to_markdown`,
:mod:`metarec.evaluation.markdown`). Metric values keep their own units (mae/rmse in rating
units, ranking metrics in [0, 1]).

The cold-start curve: ``curves[scenario][method][k][metric]`` at every support size k
("0", "1", ..., "all"), and ``curve_differences[scenario][baseline][k][metric]``, the
:class:`PairedDifference` candidate minus baseline with its paired bootstrap interval (the same
resampled tasks for both methods). Reports written before the curve differences existed (the
registry keeps champions' reports) read back with those fields empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class MethodResult:
    """One method on one scenario: metric values, bootstrap intervals and sizes."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_tasks: int = 0
    n_ratings: int = 0


@dataclass(frozen=True)
class PairedDifference:
    """Candidate minus baseline on the same tasks: point estimate and bootstrap interval.

    ``interval`` is the percentile interval of the difference over resamples drawing the same
    task indices for both methods (None without resamples). Units: the metric's own.
    """

    diff: float
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff, "interval": None if self.interval is None
                else list(self.interval)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "PairedDifference":
        iv = raw.get("interval")
        return cls(float(raw["diff"]), None if iv is None else (float(iv[0]), float(iv[1])))

    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0."""
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)


# differences[scenario][baseline][shots][metric]
Differences = dict[str, dict[str, dict[str, dict[str, PairedDifference]]]]


def dropped_counts(raw: Any) -> dict[str, dict[str, int]]:
    """The tasks manifest's ``dropped`` entry checked: ``{rule: {"users": int, "ratings": int}}``
    ({} when absent: manifests written before it existed); a malformed one is a ValueError."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"'dropped' must be a mapping of rule -> counts, got {raw!r:.200}")
    out = {}
    for rule, counts in raw.items():
        if not isinstance(counts, Mapping) or set(counts) != {"users", "ratings"}:
            raise ValueError(f"'dropped.{rule}' must be {{users: int, ratings: int}}, "
                             f"got {counts!r:.200}")
        out[str(rule)] = {"users": int(counts["users"]), "ratings": int(counts["ratings"])}
    return out


@dataclass(frozen=True)
class Report:
    """Evaluation of one candidate beside its baselines, per scenario.

    ``metrics[scenario][method][metric]`` values; ``intervals`` likewise as (low, high);
    ``curves[scenario][method][shots][metric]``; ``curve_differences`` (module docstring);
    ``counts[scenario][method]`` tasks/ratings. ``meta_training_gain``: whether meta-training
    beat its step-0 weights on validation (None: unknown, e.g. an older report), ``training``
    the figures it was read from; ``dropped``: users/ratings each data rule removed (tasks
    manifest), empty when the manifest has none.
    """

    candidate: str
    metrics: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    ci_level: float = 0.95
    curve_differences: Differences = field(default_factory=dict)
    curve_metrics: tuple[str, ...] = ()
    bootstrap_samples: int = 0
    meta_training_gain: bool | None = None
    training: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (intervals as [low, high] lists); ``dropped`` only when present."""
        out = {"candidate": self.candidate, "metrics": self.metrics, "ci_level": self.ci_level,
               "intervals": {s: {m: {k: list(v) for k, v in iv.items()}
                                 for m, iv in by.items()} for s, by in self.intervals.items()},
               "curves": self.curves, "counts": self.counts,
               "curve_differences": {
                   s: {b: {k: {m: d.to_dict() for m, d in by_m.items()}
                           for k, by_m in by_k.items()} for b, by_k in by_b.items()}
                   for s, by_b in self.curve_differences.items()},
               "curve_metrics": list(self.curve_metrics),
               "bootstrap_samples": self.bootstrap_samples,
               "meta_training_gain": self.meta_training_gain, "training": self.training}
        if self.dropped:
            out["dropped"] = self.dropped
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=True)

    def flat(self, method: str | None = None) -> dict[str, float]:
        """``{"scenario/metric": value}`` of one method (default: the candidate), for metadata."""
        method = method or self.candidate
        return {f"{s}/{m}": float(v) for s, by in self.metrics.items()
                for m, v in by.get(method, {}).items()}

    def value(self, scenario: str, method: str, metric: str, shots: str = "all") -> float | None:
        """A finite metric value at support size ``shots`` (None when absent or not finite).

        "all" falls back to the full-support ``metrics`` when the report has no curve there.
        """
        v = self.curves.get(scenario, {}).get(method, {}).get(shots, {}).get(metric)
        if v is None and shots == "all":
            v = self.metrics.get(scenario, {}).get(method, {}).get(metric)
        return None if v is None or not math.isfinite(float(v)) else float(v)

    def shots(self, scenario: str) -> list[str]:
        """The candidate's support sizes of ``scenario``'s curve in increasing order, "all"
        last (["all"] without a curve; JSON sorts the keys as text)."""
        keys = self.curves.get(scenario, {}).get(self.candidate, {})
        return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)) \
            or ["all"]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`; a missing key is a ValueError naming it. Keys added
        since (curve differences, training gain, dropped) default when absent."""
        for key in ("candidate", "metrics"):
            if key not in raw:
                raise ValueError(f"evaluation report: missing key {key!r}")
        intervals = {s: {m: {k: (float(v[0]), float(v[1])) for k, v in iv.items()}
                         for m, iv in by.items()} for s, by in raw.get("intervals", {}).items()}
        diffs = {s: {b: {k: {m: PairedDifference.from_dict(d) for m, d in by_m.items()}
                         for k, by_m in by_k.items()} for b, by_k in by_b.items()}
                 for s, by_b in raw.get("curve_differences", {}).items()}
        gain = raw.get("meta_training_gain")
        return cls(candidate=str(raw["candidate"]), metrics=raw["metrics"], intervals=intervals,
                   curves=raw.get("curves", {}), counts=raw.get("counts", {}),
                   ci_level=float(raw.get("ci_level", 0.95)), curve_differences=diffs,
                   curve_metrics=tuple(raw.get("curve_metrics", ())),
                   bootstrap_samples=int(raw.get("bootstrap_samples", 0)),
                   meta_training_gain=None if gain is None else bool(gain),
                   training=dict(raw.get("training", {})),
                   dropped=dropped_counts(raw.get("dropped", {})))

    def to_markdown(self) -> str:
        """Tables per scenario (full support, the curve, the differences) and the notes."""
        from metarec.evaluation.markdown import report_markdown

        return report_markdown(self)


def build_report(results: Mapping[str, Mapping[str, MethodResult]], candidate: str,
                 curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
                 | None = None, ci_level: float = 0.95, *,
                 differences: Differences | None = None, curve_metrics: tuple[str, ...] = (),
                 bootstrap_samples: int = 0) -> Report:
    """Assemble a :class:`Report` from ``{scenario: {method: MethodResult}}`` and curves."""
    for scenario, by_method in results.items():
        if candidate not in by_method:
            raise ValueError(f"scenario {scenario!r} has no result for the candidate "
                             f"{candidate!r} (methods: {sorted(by_method)})")
    return Report(
        candidate=candidate,
        metrics={s: {m: dict(r.metrics) for m, r in by.items()} for s, by in results.items()},
        intervals={s: {m: dict(r.intervals) for m, r in by.items()} for s, by in results.items()},
        curves={s: {m: {k: dict(v) for k, v in c.items()} for m, c in by.items()}
                for s, by in (curves or {}).items()},
        counts={s: {m: {"n_tasks": r.n_tasks, "n_ratings": r.n_ratings} for m, r in by.items()}
                for s, by in results.items()},
        ci_level=ci_level, curve_differences=dict(differences or {}),
        curve_metrics=tuple(curve_metrics), bootstrap_samples=bootstrap_samples)
