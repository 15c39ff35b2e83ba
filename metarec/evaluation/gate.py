"""The registration gate: a pure verdict on an evaluation report, its baselines and the champion.

Cold start is a curve, so the gate checks the candidate against every configured baseline at
every gated support size k (``gate.curve_shots``; default every k of the report's curves:
``evaluation.curve_shots`` plus "all"), on every ``gate.metrics``, per gated scenario.
mae/rmse are lower-is-better, ranking metrics higher-is-better. ``gate.rule`` decides a check:

- ``paired_bootstrap`` (default): at each k the candidate fails only when the paired bootstrap
  interval of (candidate - baseline) lies entirely on the worse side, i.e. it is worse beyond
  what resampling the test users explains; at full support ("all") its point estimate must also
  be better than the baseline's, the claim the product makes. Why the default: with ~60 test
  users a point comparison at 6 support sizes x 2 metrics x 4 baselines refuses good models for
  noise (and would demand that 0 shots strictly beats item_mean, which cannot adapt), while an
  interval entirely on the worse side is evidence of a real regression. A non-adapting baseline
  is a flat curve: at 0 shots the candidate passes when it is at least equal to it within the
  interval.
- ``point``: the pre-curve rule at every k: strictly better point estimate (a tie fails).

The champion is compared at full support only. When the report evaluated the champion itself
on this run's test users (method ``champion``: metarec.pipeline.evaluate.champion_predictor,
``training.champion.evaluated == "here"``), those values count; otherwise the champion's
stored report does (another run's test users, possibly older code without curves). The
candidate may be worse than the champion by at most ``champion_margin`` (the metric's unit).

A learner whose meta-training never beat its step-0 weights (``meta_training_gain`` false, or
unknown) is refused unless ``gate.allow_no_training_gain``. A missing scenario, baseline, metric,
support size or interval, or a NaN value, fails the gate with a reason: a gate never passes for
lack of evidence. Without a champion (the first model) only the baselines count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from metarec.config import GateConfig
from metarec.evaluation.metrics import lower_is_better
from metarec.evaluation.report import ALL_SHOTS, PairedDifference, Report

CHAMPION = "champion"  # the report's method name of the champion re-evaluated on its tasks


@dataclass(frozen=True)
class GateCheck:
    """One comparison: candidate vs a baseline or the champion on one scenario, metric and
    support size; ``interval``: the paired interval of candidate - other (bootstrap rule)."""

    scenario: str
    metric: str
    against: str  # a baseline's method name, "champion", or "start" (the training gain)
    candidate: float | None
    other: float | None
    passed: bool
    reason: str
    shots: str = ALL_SHOTS
    interval: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "GateCheck":
        """Inverse of ``asdict``; verdicts stored before curves (no shots/interval) read too."""
        iv = raw.get("interval")
        return cls(**{**raw, "interval": None if iv is None else (float(iv[0]), float(iv[1]))})


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
        checks = tuple(GateCheck.from_dict(c) for c in raw.get("checks", []))
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

    def to_markdown(self) -> str:
        """The verdict as a report.md section: PASSED/FAILED and every reason."""
        return "\n".join([f"## Gate: {'PASSED' if self.passed else 'FAILED'}", "",
                          *(f"- {r}" for r in self.reasons)]) + "\n"


def _better(metric: str, cand: float, other: float) -> bool:
    """Strictly better in the metric's direction (a tie is not better)."""
    return cand < other if lower_is_better(metric) else cand > other


def _missing(name: str, scenario: str, metric: str, against: str, shots: str,
             cand: float | None, other: float | None) -> GateCheck:
    missing = "candidate" if cand is None else against
    return GateCheck(scenario, metric, against, cand, other, False,
                     f"{name}: no finite value for {missing}", shots)


def _point(scenario: str, metric: str, against: str, shots: str, cand: float, other: float,
           margin: float | None) -> GateCheck:
    """Candidate vs ``other``: strictly better when margin is None, else within the margin."""
    name = f"{scenario}/{metric}@{shots} vs {against}"
    low = lower_is_better(metric)
    if margin is None:
        ok = _better(metric, cand, other)
        rel = "beats" if ok else "does not beat"
        return GateCheck(scenario, metric, against, cand, other, ok,
                         f"{name}: {cand:.4f} {rel} {other:.4f}", shots)
    ok = cand <= other + margin if low else cand >= other - margin
    rel = "within" if ok else "worse than"
    return GateCheck(scenario, metric, against, cand, other, ok,
                     f"{name}: {cand:.4f} {rel} champion {other:.4f} (margin {margin})", shots)


def _paired(scenario: str, metric: str, against: str, shots: str, cand: float, other: float,
            diff: PairedDifference | None, level: float) -> GateCheck:
    """The paired-bootstrap rule (module docstring) on one scenario, metric, baseline and k."""
    name = f"{scenario}/{metric}@{shots} vs {against}"
    if diff is None or diff.interval is None:
        return GateCheck(scenario, metric, against, cand, other, False,
                         f"{name}: {cand:.4f} vs {other:.4f}, no paired interval in the report "
                         "(evaluation.bootstrap_samples 0, or not a curve metric)", shots)
    lo, hi = diff.interval
    worse = lo > 0 if lower_is_better(metric) else hi < 0  # the whole interval on that side
    point_ok = shots != ALL_SHOTS or _better(metric, cand, other)
    ok = not worse and point_ok
    verdict = ("interval entirely on the worse side" if worse else
               "point estimate not better at full support" if not point_ok else
               "not worse within the interval" if shots != ALL_SHOTS else "better")
    return GateCheck(scenario, metric, against, cand, other, ok,
                     f"{name}: {cand:.4f} vs {other:.4f}, difference {diff.diff:+.4f} "
                     f"[{level:.0%} CI {lo:+.4f}, {hi:+.4f}]: {verdict}", shots, (lo, hi))


def _baseline_checks(report: Report, scenario: str, metric: str, shots: list[str],
                     policy: GateConfig) -> list[GateCheck]:
    checks = []
    for k in shots:
        cand = report.value(scenario, report.candidate, metric, k)
        for baseline in policy.baselines:
            other = report.value(scenario, baseline, metric, k)
            if cand is None or other is None:
                checks.append(_missing(f"{scenario}/{metric}@{k} vs {baseline}", scenario,
                                       metric, baseline, k, cand, other))
            elif policy.rule == "point":
                checks.append(_point(scenario, metric, baseline, k, cand, other, None))
            else:
                diff = report.curve_differences.get(scenario, {}).get(baseline, {}).get(
                    k, {}).get(metric)
                checks.append(_paired(scenario, metric, baseline, k, cand, other, diff,
                                      report.ci_level))
    return checks


def _gated_shots(report: Report, scenario: str, policy: GateConfig) -> list[str]:
    return [str(k) for k in policy.curve_shots] or report.shots(scenario)


def _training_check(report: Report, policy: GateConfig) -> tuple[list[GateCheck], list[str]]:
    """The refusal of a learner that never beat its starting point (or a note when allowed)."""
    if report.meta_training_gain:
        return [], []
    t = report.training
    what = ("unknown (no training summary)" if report.meta_training_gain is None else
            f"false: best validation MAE at step {t.get('best_step')} of {t.get('steps')}")
    if policy.allow_no_training_gain:
        return [], [f"meta_training_gain {what}; accepted (gate.allow_no_training_gain)"]
    return [GateCheck("-", "meta_training_gain", "start", None, None, False,
                      f"meta_training_gain {what}: meta-training never beat its step-0 "
                      "weights; refused (set gate.allow_no_training_gain: true to accept)")], []


def gate(report: Report, champion_report: Report | None, policy: GateConfig) -> GateDecision:
    """Decide whether ``report``'s candidate may be registered as challenger (pure)."""
    if not policy.metrics:
        raise ValueError("gate.metrics is empty: the gate would pass anything")
    if policy.champion_margin < 0:
        raise ValueError(f"gate.champion_margin must be >= 0, got {policy.champion_margin}")
    scenarios = list(policy.scenarios) or sorted(report.metrics)
    checks, notes = _training_check(report, policy)
    here = report.training.get("champion", {}) if isinstance(report.training, dict) else {}
    rerun = isinstance(here, dict) and here.get("evaluated") == "here"
    if rerun:
        notes.append(f"champion version {here.get('version')} re-evaluated on this run's test "
                     "users")
    elif champion_report is not None and isinstance(here, dict) and here.get("reason"):
        notes.append(f"champion compared through its stored report: {here['reason']}")
    if not scenarios:
        checks.append(GateCheck("-", "-", "-", None, None, False, "the report has no scenarios"))
    for scenario in scenarios:
        if scenario not in report.metrics:
            checks.append(GateCheck(scenario, "-", "-", None, None, False,
                                    f"{scenario}: scenario missing from the report"))
            continue
        shots = _gated_shots(report, scenario, policy)
        for metric in policy.metrics:
            checks += _baseline_checks(report, scenario, metric, shots, policy)
            if champion_report is None and not rerun:
                continue
            cand = report.value(scenario, report.candidate, metric)
            champ = (report.value(scenario, CHAMPION, metric) if rerun else
                     champion_report.value(scenario, champion_report.candidate, metric))
            name = f"{scenario}/{metric}@{ALL_SHOTS} vs champion"
            if champ is None:
                notes.append(f"{scenario}/{metric}: the champion has no value; not compared")
            elif cand is None:
                checks.append(_missing(name, scenario, metric, "champion", ALL_SHOTS, cand,
                                       champ))
            else:
                checks.append(_point(scenario, metric, "champion", ALL_SHOTS, cand, champ,
                                     policy.champion_margin))
    failed = [c.reason for c in checks if not c.passed]
    if failed:
        return GateDecision(False, tuple(failed + notes), tuple(checks))
    summary = (f"all {len(checks)} checks passed ({policy.rule} rule) on "
               f"{', '.join(scenarios)} "
               f"({'with' if champion_report or rerun else 'no'} champion)")
    return GateDecision(True, (summary, *notes), tuple(checks))
