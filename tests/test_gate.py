"""The gate: table-driven verdicts on tiny reports."""

from __future__ import annotations

import pytest

from metarec.config import GateConfig
from metarec.evaluation.gate import GateDecision, gate
from metarec.evaluation.report import PairedDifference, Report

POLICY = GateConfig(metrics=("mae", "ndcg_at_3"), champion_margin=0.01, scenarios=(),
                    baselines=("item_mean", "global"), rule="point")


def report(melu=(0.80, 0.90), item_mean=(0.90, 0.85), glob=(0.85, 0.88),
           scenarios=("warm", "user_cold"), candidate="melu") -> Report:
    def row(v):
        return {"mae": v[0], "ndcg_at_3": v[1]}
    return Report(candidate=candidate,
                  metrics={s: {candidate: row(melu), "item_mean": row(item_mean),
                               "global": row(glob)} for s in scenarios},
                  meta_training_gain=True)


def test_passes_when_it_beats_every_baseline_without_champion():
    d = gate(report(), None, POLICY)
    assert d.passed and d.consistent()
    assert len(d.checks) == 2 * 2 * 2  # scenarios x metrics x baselines
    assert "no champion" in d.reasons[0]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"item_mean": (0.79, 0.85)}, "warm/mae@all vs item_mean: 0.8000 does not beat 0.7900"),
    ({"glob": (0.85, 0.90)}, "ndcg_at_3@all vs global: 0.9000 does not beat 0.9000"),  # a tie fails
    ({"melu": (float("nan"), 0.9)}, "no finite value for candidate"),
])
def test_fails_against_a_baseline(kwargs, fragment):
    d = gate(report(**kwargs), None, POLICY)
    assert not d.passed
    assert any(fragment in r for r in d.reasons), d.reasons


def test_missing_baseline_or_scenario_fails():
    d = gate(report(), None, GateConfig(baselines=("item_mean", "finetune"),
                                        metrics=("mae",), rule="point"))
    assert not d.passed and any("no finite value for finetune" in r for r in d.reasons)
    d = gate(report(), None, GateConfig(scenarios=("item_cold",), baselines=("global",)))
    assert not d.passed and d.reasons == ("item_cold: scenario missing from the report",)


@pytest.mark.parametrize("champion, passed", [
    ((0.795, 0.905), True),   # slightly better champion, inside the margin
    ((0.78, 0.90), False),    # champion mae better by 0.02 > margin
    ((0.80, 0.92), False),    # champion ndcg better by 0.02 > margin
    ((0.90, 0.50), True),     # candidate better than the champion
])
def test_champion_margin(champion, passed):
    champ = report(melu=champion, candidate="melu")
    d = gate(report(), champ, POLICY)
    assert d.passed is passed, d.reasons
    assert sum(c.against == "champion" for c in d.checks) == 4


def test_champion_on_other_scenarios_is_noted_not_compared():
    champ = report(scenarios=("warm",))
    d = gate(report(), champ, POLICY)
    assert d.passed
    assert any("user_cold/mae: the champion has no value" in r for r in d.reasons)


def test_verdict_roundtrip_and_consistency():
    d = gate(report(item_mean=(0.7, 0.1)), None, POLICY)
    again = GateDecision.from_json(d.to_json())
    assert again == d and not again.passed
    forged = GateDecision(True, d.reasons, d.checks)
    assert not forged.consistent()
    with pytest.raises(ValueError, match="boolean 'passed'"):
        GateDecision.from_json('{"reasons": []}')


def test_bad_policy_is_an_error():
    with pytest.raises(ValueError, match="gate.metrics is empty"):
        gate(report(), None, GateConfig(metrics=()))
    with pytest.raises(ValueError, match="champion_margin"):
        gate(report(), None, GateConfig(champion_margin=-1.0))


def test_verdicts_stored_before_curves_still_read():
    """The registry's versions carry verdicts whose checks have no shots/interval."""
    old = ('{"passed": true, "reasons": ["ok"], "checks": [{"scenario": "warm", "metric": '
           '"mae", "against": "item_mean", "candidate": 0.8, "other": 0.9, "passed": true, '
           '"reason": "warm/mae vs item_mean: 0.8000 beats 0.9000"}]}')
    d = GateDecision.from_json(old)
    assert d.consistent() and d.checks[0].shots == "all" and d.checks[0].interval is None


# --------------------------------------------------------------------------- the curve rule


def curve_report(k: str, metric: str, cand: float, base: float,
                 interval: tuple[float, float] | None, gain: bool | None = True) -> Report:
    """One scenario ("test"), candidate melu and baseline item_mean, one support size k."""
    diff = PairedDifference(cand - base, interval)
    return Report(candidate="melu",
                  metrics={"test": {"melu": {metric: cand}, "item_mean": {metric: base}}},
                  curves={"test": {"melu": {k: {metric: cand}},
                                   "item_mean": {k: {metric: base}}}},
                  curve_differences={"test": {"item_mean": {k: {metric: diff}}}},
                  meta_training_gain=gain, training={"best_step": 0, "steps": 150})


def curve_policy(rule: str, k: str, metric: str, **kw) -> GateConfig:
    return GateConfig(metrics=(metric,), baselines=("item_mean",), rule=rule,
                      curve_shots=(k if k == "all" else int(k),), **kw)


@pytest.mark.parametrize("rule, k, metric, cand, base, interval, passed, fragment", [
    # paired_bootstrap: worse point estimate, but the interval straddles 0 -> passes below "all"
    ("paired_bootstrap", "1", "mae", 0.85, 0.80, (-0.01, 0.11), True,
     "not worse within the interval"),
    ("paired_bootstrap", "1", "mae", 0.90, 0.80, (0.02, 0.18), False,
     "test/mae@1 vs item_mean: 0.9000 vs 0.8000, difference +0.1000 [95% CI +0.0200, +0.1800]: "
     "interval entirely on the worse side"),
    ("paired_bootstrap", "3", "ndcg_at_3", 0.70, 0.75, (-0.09, -0.01), False,
     "entirely on the worse side"),
    ("paired_bootstrap", "3", "ndcg_at_3", 0.80, 0.75, (0.01, 0.09), True, "not worse"),
    # 0 shots against a flat baseline: equal within the interval is enough
    ("paired_bootstrap", "0", "mae", 0.80, 0.80, (0.0, 0.0), True, "not worse"),
    # full support: the point estimate must be better too
    ("paired_bootstrap", "all", "mae", 0.80, 0.80, (-0.01, 0.01), False,
     "point estimate not better at full support"),
    ("paired_bootstrap", "all", "mae", 0.79, 0.80, (-0.03, 0.01), True, "better"),
    ("paired_bootstrap", "1", "mae", 0.79, 0.80, None, False, "no paired interval"),
    # point: strictly better at every k, a tie at 0 shots fails
    ("point", "1", "mae", 0.85, 0.80, (-0.01, 0.11), False,
     "test/mae@1 vs item_mean: 0.8500 does not beat 0.8000"),
    ("point", "0", "mae", 0.80, 0.80, (0.0, 0.0), False, "does not beat"),
    ("point", "5", "ndcg_at_3", 0.80, 0.75, None, True, "beats"),
])
def test_curve_rule(rule, k, metric, cand, base, interval, passed, fragment):
    d = gate(curve_report(k, metric, cand, base, interval), None,
             curve_policy(rule, k, metric))
    assert d.passed is passed and d.consistent(), d.reasons
    (check,) = d.checks
    assert check.shots == k and fragment in check.reason
    assert check.interval == (interval if rule == "paired_bootstrap" else None)
    assert (d.reasons[0] == check.reason) is (not passed)


def test_every_k_of_the_curve_is_gated_by_default():
    rep = Report(candidate="melu", metrics={"test": {"melu": {"mae": 0.8}, "user_mean": {
        "mae": 0.9}}}, meta_training_gain=True,
        curves={"test": {"melu": {"0": {"mae": 1.2}, "1": {"mae": 0.95}, "all": {"mae": 0.8}},
                         "user_mean": {"0": {"mae": 0.9}, "1": {"mae": 1.0},
                                       "all": {"mae": 0.9}}}})
    d = gate(rep, None, GateConfig(metrics=("mae",), baselines=("user_mean",), rule="point"))
    assert [c.shots for c in d.checks] == ["0", "1", "all"]
    assert d.reasons == ("test/mae@0 vs user_mean: 1.2000 does not beat 0.9000",)
    only = GateConfig(metrics=("mae",), baselines=("user_mean",), rule="point",
                      curve_shots=(1, "all"))
    assert gate(rep, None, only).passed
    missing = GateConfig(metrics=("mae",), baselines=("user_mean",), curve_shots=(10,))
    assert gate(rep, None, missing).reasons == (
        "test/mae@10 vs user_mean: no finite value for candidate",)


@pytest.mark.parametrize("gain, allow, passed, fragment", [
    (True, False, True, None),
    (False, False, False, "meta_training_gain false: best validation MAE at step 0 of 150: "
                          "meta-training never beat its step-0 weights; refused"),
    (False, True, True, "accepted (gate.allow_no_training_gain)"),
    (None, False, False, "meta_training_gain unknown (no training summary)"),
])
def test_no_training_gain_is_refused_by_default(gain, allow, passed, fragment):
    rep = curve_report("all", "mae", 0.79, 0.80, (-0.03, -0.001), gain=gain)
    d = gate(rep, None, curve_policy("paired_bootstrap", "all", "mae",
                                     allow_no_training_gain=allow))
    assert d.passed is passed and d.consistent(), d.reasons
    assert fragment is None or any(fragment in r for r in d.reasons), d.reasons


def test_champion_is_compared_at_full_support_with_an_old_report():
    old = Report.from_dict({"candidate": "melu", "metrics": {"test": {"melu": {"mae": 0.7}}}})
    d = gate(curve_report("all", "mae", 0.79, 0.80, (-0.03, -0.001)), old,
             curve_policy("paired_bootstrap", "all", "mae"))
    assert not d.passed
    assert d.reasons == ("test/mae@all vs champion: 0.7900 worse than champion 0.7000 "
                         "(margin 0.01)",)


def test_verdict_markdown_lists_reasons():
    d = gate(curve_report("1", "mae", 0.9, 0.8, (0.02, 0.18)), None,
             curve_policy("paired_bootstrap", "1", "mae"))
    md = d.to_markdown()
    assert md.startswith("## Gate: FAILED") and "- test/mae@1 vs item_mean: 0.9000" in md
