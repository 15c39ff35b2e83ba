"""The evaluation report: a candidate beside its baselines per scenario, as JSON and markdown.

:class:`MethodResult` is one method on one scenario; :func:`build_report` assembles them into a
:class:`Report`, which round-trips through JSON (:meth:`Report.to_dict` /
:meth:`Report.from_dict`) and renders as report.md (:meth:`Report.to_markdown`: per scenario
the full-support table, the curve and the paired differences, then the training and data notes).
Metric values keep their own units (mae/rmse in rating units, ranking metrics in [0, 1]).

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


ALL_SHOTS = "all"  # the support-size key of a whole support set in curves and differences
FULL_PREFIX = "full_"  # full-catalog metrics (metarec.evaluation.catalog), a table of their own


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

    def value(self, scenario: str, method: str, metric: str,
              shots: str = ALL_SHOTS) -> float | None:
        """A finite metric value at support size ``shots`` (None when absent or not finite).

        "all" falls back to the full-support ``metrics`` when the report has no curve there.
        """
        v = self.curves.get(scenario, {}).get(method, {}).get(shots, {}).get(metric)
        if v is None and shots == ALL_SHOTS:
            v = self.metrics.get(scenario, {}).get(method, {}).get(metric)
        return None if v is None or not math.isfinite(float(v)) else float(v)

    def shots(self, scenario: str) -> list[str]:
        """The candidate's support sizes of ``scenario``'s curve in increasing order, "all"
        last (["all"] without a curve; JSON sorts the keys as text)."""
        keys = self.curves.get(scenario, {}).get(self.candidate, {})
        return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)) \
            or [ALL_SHOTS]

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
        """Tables per scenario (full support, the curve, the differences) and the notes; the
        gate's verdict is appended by :func:`metarec.evaluation.output.write_verdict`."""
        return _markdown(self)


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


# --------------------------------------------------------------------------- report.md


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(head), "|" + "---|" * len(head), *map(_row, rows), ""]


def _full_support(report: Report, scenario: str, catalog: bool = False) -> list[str]:
    """The full-support table of the query-set metrics, or (``catalog``) of the full-catalog
    ones (``full_*``: every catalog item ranked), [] when there are none."""
    by_method = report.metrics[scenario]
    names = sorted({n for vals in by_method.values() for n in vals
                    if n.startswith(FULL_PREFIX) == catalog})
    if not names:
        return []
    rows = []
    for method, vals in by_method.items():
        cells = [f"**{method}**" if method == report.candidate else method]
        for n in names:
            iv = report.intervals.get(scenario, {}).get(method, {}).get(n)
            cells.append("-" if n not in vals else f"{vals[n]:.4f}"
                         + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""))
        rows.append(cells)
    table = _table(["method", *names], rows)
    if not catalog:
        return table
    return ["### Full catalog (every item the user did not interact with in support, ranked)",
            "", *table]


def _metrics_of(report: Report, by_method: dict) -> list[str]:
    """The curve metrics: as configured, else those found in ``{method: {k: {metric: _}}}``."""
    return list(report.curve_metrics) or sorted(
        {m for by_k in by_method.values() for v in by_k.values() for m in v})


def _curve(report: Report, scenario: str) -> list[str]:
    curves = report.curves.get(scenario, {})
    if not curves:
        return []
    shots, metrics = report.shots(scenario), _metrics_of(report, curves)
    rows = [[metric, f"**{method}**" if method == report.candidate else method,
             *(f"{curve[k][metric]:.4f}" if metric in curve.get(k, {}) else "-"
               for k in shots)]
            for metric in metrics for method, curve in curves.items()
            if any(metric in v for v in curve.values())]  # rating errors: not for most_pop
    return ["### Cold-start curve (metric at k support ratings)", "",
            *_table(["metric", "method", *shots], rows)]


def _differences(report: Report, scenario: str) -> list[str]:
    by_base = report.curve_differences.get(scenario, {})
    if not by_base:
        return []
    shots, metrics = report.shots(scenario), _metrics_of(report, by_base)
    rows = []
    for metric in metrics:
        for base, by_k in by_base.items():
            if not any(metric in v for v in by_k.values()):
                continue  # a rating error of a baseline that scores without ratings
            cells = []
            for k in shots:
                d = by_k.get(k, {}).get(metric)
                text = "-" if d is None else f"{d.diff:+.4f}" + (
                    "" if d.interval is None else
                    f" [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}]")
                cells.append(f"**{text}**" if d is not None and d.excludes_zero() else text)
            rows.append([metric, base, *cells])
    return [f"### {report.candidate} minus each baseline (paired bootstrap)", "",
            *_table(["metric", "baseline", *shots], rows),
            "Bold: the interval excludes 0. mae: negative is better; ranking metrics: "
            "positive is better.", ""]


def _notes(report: Report) -> list[str]:
    lines: list[str] = []
    if report.meta_training_gain is not None:
        t = report.training
        error = t.get("valid_error", "MAE")  # train.valid_metric (1 - AUC on implicit data)
        detail = (f"best validation {error} {t.get('best_valid_mae', float('nan')):.4f} at step "
                  f"{t.get('best_step')} of {t.get('steps')}")
        lines += ["## Meta-training", "",
                  (f"meta_training_gain: true ({detail})." if report.meta_training_gain else
                   f"**meta_training_gain: false**: meta-training never beat its starting point "
                   f"({detail}); the gate refuses it unless gate.allow_no_training_gain."), ""]
        if t.get("criterion") == "fallback_shots":
            lines += [f"**Early stopping fell back** (train.fallback_shots): the validation "
                      f"{error} at train.valid_shots never beat step 0, so the weights kept are those of step "
                      f"{t.get('best_step')}, best at the fallback support sizes (error "
                      f"{float(t.get('fallback_valid_mae') or float('nan')):.4f}); the "
                      f"valid_shots error above is theirs.", ""]
        if t.get("prior_shift") is not None:
            lines += [f"Prior calibrated after training (train.calibrate_prior): output bias "
                      f"{float(t['prior_shift']):+.4f}, the mean 0-shot residual of the training "
                      f"users within the rating window.", ""]
        c = t.get("head_factors_choice")
        if c:
            lines += [f"model.head_factors auto: {'with' if c['head_factors'] else 'without'} "
                      f"the item-factor head (validation error {c['error_with']:.4f} with, "
                      f"{c['error_without']:.4f} without; difference {c['difference']:+.4f}, "
                      f"standard error {c['standard_error']:.4f}, {c['tasks']} tasks"
                      + (" at train.fallback_shots" if c.get("criterion") == "fallback_shots"
                         else "") + "; kept only when lower by more than one standard error"
                      + ("; the rule's pick never beat its starting point, so the training that "
                         "did is kept unless the untrained one is lower by more than two "
                         "standard errors" if c.get("rule") == "trained over untrained" else "")
                      + ").", ""]
    if report.dropped:
        lines += ["## Data dropped before the tasks", "",
                  *_table(["rule", "users", "ratings"],
                          [[r, str(c["users"]), str(c["ratings"])]
                           for r, c in report.dropped.items()])]
    return lines


def _markdown(report: Report) -> str:
    """The whole report.md text of ``report``."""
    lines = [f"# Evaluation: {report.candidate}", ""]
    for scenario in report.metrics:
        counts = report.counts.get(scenario, {}).get(report.candidate, {})
        lines += [f"## {scenario}" + (f" ({counts.get('n_tasks')} tasks)" if counts else ""),
                  "", *_full_support(report, scenario),
                  *_full_support(report, scenario, catalog=True), *_curve(report, scenario),
                  *_differences(report, scenario)]
    lines += _notes(report)
    resamples = f", {report.bootstrap_samples} resamples" if report.bootstrap_samples else ""
    lines.append(f"Intervals: {report.ci_level:.0%} percentile bootstrap over tasks{resamples}; "
                 "differences resample the same tasks for both methods. "
                 "mae/rmse: lower is better; ranking metrics: higher is better. full_*: "
                 "full-catalog ranking (recall, hit rate and binary nDCG at k, MRR).")
    return "\n".join(lines) + "\n"
