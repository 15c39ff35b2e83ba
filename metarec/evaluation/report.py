"""The evaluation report: a candidate beside its baselines per scenario, as JSON and markdown.

:class:`MethodResult` is one method on one scenario; :func:`build_report` assembles them into a
:class:`Report`, which round-trips through JSON (:meth:`Report.to_dict` /
:meth:`Report.from_dict`) and renders as markdown tables (:meth:`Report.to_markdown`). Metric
values keep their own units (mae/rmse in rating units, ranking metrics in [0, 1]).
"""

from __future__ import annotations

import json
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
class Report:
    """Evaluation of one candidate beside its baselines, per scenario.

    ``metrics[scenario][method][metric]`` values; ``intervals`` likewise as (low, high);
    ``curves[scenario][method][shots][metric]``; ``counts[scenario][method]`` tasks/ratings.
    """

    candidate: str
    metrics: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    ci_level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (intervals as [low, high] lists)."""
        return {"candidate": self.candidate, "metrics": self.metrics, "ci_level": self.ci_level,
                "intervals": {s: {m: {k: list(v) for k, v in iv.items()}
                                  for m, iv in by.items()} for s, by in self.intervals.items()},
                "curves": self.curves, "counts": self.counts}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=True)

    def flat(self, method: str | None = None) -> dict[str, float]:
        """``{"scenario/metric": value}`` of one method (default: the candidate), for metadata."""
        method = method or self.candidate
        return {f"{s}/{m}": float(v) for s, by in self.metrics.items()
                for m, v in by.get(method, {}).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`; a missing key is a ValueError naming it."""
        for key in ("candidate", "metrics"):
            if key not in raw:
                raise ValueError(f"evaluation report: missing key {key!r}")
        intervals = {s: {m: {k: (float(v[0]), float(v[1])) for k, v in iv.items()}
                         for m, iv in by.items()} for s, by in raw.get("intervals", {}).items()}
        return cls(candidate=str(raw["candidate"]), metrics=raw["metrics"], intervals=intervals,
                   curves=raw.get("curves", {}), counts=raw.get("counts", {}),
                   ci_level=float(raw.get("ci_level", 0.95)))

    def to_markdown(self) -> str:
        """One table per scenario: methods as rows, metrics as columns, intervals in brackets."""
        lines = [f"# Evaluation: {self.candidate}", ""]
        for scenario, by_method in self.metrics.items():
            names = sorted({n for vals in by_method.values() for n in vals})
            counts = self.counts.get(scenario, {}).get(self.candidate, {})
            lines += [f"## {scenario}" + (f" ({counts.get('n_tasks')} tasks)" if counts else ""),
                      "", "| method | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for method, vals in by_method.items():
                cells = []
                for n in names:
                    v = vals.get(n, float("nan"))
                    iv = self.intervals.get(scenario, {}).get(method, {}).get(n)
                    cells.append(f"{v:.4f}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""))
                label = f"**{method}**" if method == self.candidate else method
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append(f"Intervals: {self.ci_level:.0%} percentile bootstrap over tasks. "
                     "mae/rmse: lower is better; ranking metrics: higher is better.")
        return "\n".join(lines) + "\n"


def build_report(results: Mapping[str, Mapping[str, MethodResult]], candidate: str,
                 curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
                 | None = None, ci_level: float = 0.95) -> Report:
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
        ci_level=ci_level)
