"""The registration gate: a pure verdict on an evaluation report, its baselines and the champion.

Per gated scenario, the candidate must be strictly better than every configured baseline on
every gated metric, and no worse than the current champion by more than ``champion_margin``
(in the metric's own unit; mae/rmse are lower-is-better, ranking metrics higher-is-better).
A missing scenario, baseline or metric, or a NaN value, fails the gate with a reason: a gate
never passes for lack of evidence. Without a champion (the first model) only the baselines count.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from metarec.config import GateConfig
from metarec.evaluation.metrics import lower_is_better
from metarec.evaluation.report import Report


@dataclass(frozen=True)
class GateCheck:
    """One comparison: candidate vs a baseline or the champion on one scenario and metric."""

    scenario: str
    metric: str
    against: str  # a baseline's method name, or "champion"
    candidate: float | None
    other: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateDecision:
    """The verdict: ``passed`` and human-readable ``reasons`` (the failures, or a summary)."""

    passed: bool
    reasons: tuple[str, ...]
    checks: tuple[GateCheck, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons),
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "GateDecision":
        """Inverse of :meth:`to_dict`; a malformed verdict is a ValueError."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("passed"), bool):
            raise ValueError(f"gate verdict: expected a mapping with a boolean 'passed', "
                             f"got {raw!r:.200}")
        checks = tuple(GateCheck(**c) for c in raw.get("checks", []))
        return cls(passed=raw["passed"], reasons=tuple(raw.get("reasons", [])), checks=checks)

    @classmethod
    def from_json(cls, text: str) -> "GateDecision":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"gate verdict: not valid JSON: {exc}") from None

    def consistent(self) -> bool:
        """True when ``passed`` agrees with the checks (a verdict cannot be edited into passing)."""
        return bool(self.checks) and self.passed == all(c.passed for c in self.checks)


def _value(report: Report, scenario: str, method: str, metric: str) -> float | None:
    v = report.metrics.get(scenario, {}).get(method, {}).get(metric)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _compare(scenario: str, metric: str, against: str, cand: float | None, other: float | None,
             margin: float) -> GateCheck:
    """Candidate vs ``other``: strictly better when margin is None, else within the margin."""
    name = f"{scenario}/{metric} vs {against}"
    if cand is None or other is None:
        missing = "candidate" if cand is None else against
        return GateCheck(scenario, metric, against, cand, other, False,
                         f"{name}: no finite value for {missing}")
    low = lower_is_better(metric)
    if margin is None:
        ok = cand < other if low else cand > other
        rel = "beats" if ok else "does not beat"
        return GateCheck(scenario, metric, against, cand, other, ok,
                         f"{name}: {cand:.4f} {rel} {other:.4f}")
    ok = cand <= other + margin if low else cand >= other - margin
    rel = "within" if ok else "worse than"
    return GateCheck(scenario, metric, against, cand, other, ok,
                     f"{name}: {cand:.4f} {rel} champion {other:.4f} (margin {margin})")


def gate(report: Report, champion_report: Report | None, policy: GateConfig) -> GateDecision:
    """Decide whether ``report``'s candidate may be registered as challenger (pure)."""
    if not policy.metrics:
        raise ValueError("gate.metrics is empty: the gate would pass anything")
    if policy.champion_margin < 0:
        raise ValueError(f"gate.champion_margin must be >= 0, got {policy.champion_margin}")
    scenarios = list(policy.scenarios) or sorted(report.metrics)
    checks: list[GateCheck] = []
    notes: list[str] = []
    if not scenarios:
        checks.append(GateCheck("-", "-", "-", None, None, False, "the report has no scenarios"))
    for scenario in scenarios:
        if scenario not in report.metrics:
            checks.append(GateCheck(scenario, "-", "-", None, None, False,
                                    f"{scenario}: scenario missing from the report"))
            continue
        for metric in policy.metrics:
            cand = _value(report, scenario, report.candidate, metric)
            for baseline in policy.baselines:
                checks.append(_compare(scenario, metric, baseline, cand,
                                       _value(report, scenario, baseline, metric), None))
            if champion_report is None:
                continue
            champ = _value(champion_report, scenario, champion_report.candidate, metric)
            if champ is None:
                notes.append(f"{scenario}/{metric}: the champion has no value; not compared")
                continue
            checks.append(_compare(scenario, metric, "champion", cand, champ,
                                   policy.champion_margin))
    failed = [c.reason for c in checks if not c.passed]
    if failed:
        return GateDecision(False, tuple(failed + notes), tuple(checks))
    summary = (f"all {len(checks)} checks passed on {', '.join(scenarios)} "
               f"({'with' if champion_report else 'no'} champion)")
    return GateDecision(True, (summary, *notes), tuple(checks))
