"""The gate: table-driven verdicts on tiny reports."""

from __future__ import annotations

import pytest

from metarec.config import GateConfig
from metarec.evaluation.gate import GateDecision, gate
from metarec.evaluation.report import Report

POLICY = GateConfig(metrics=("mae", "ndcg_at_3"), champion_margin=0.01, scenarios=(),
                    baselines=("item_mean", "global"))


def report(melu=(0.80, 0.90), item_mean=(0.90, 0.85), glob=(0.85, 0.88),
           scenarios=("warm", "user_cold"), candidate="melu") -> Report:
    def row(v):
        return {"mae": v[0], "ndcg_at_3": v[1]}
    return Report(candidate=candidate,
                  metrics={s: {candidate: row(melu), "item_mean": row(item_mean),
                               "global": row(glob)} for s in scenarios})


def test_passes_when_it_beats_every_baseline_without_champion():
    d = gate(report(), None, POLICY)
    assert d.passed and d.consistent()
    assert len(d.checks) == 2 * 2 * 2  # scenarios x metrics x baselines
    assert "no champion" in d.reasons[0]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"item_mean": (0.79, 0.85)}, "warm/mae vs item_mean: 0.8000 does not beat 0.7900"),
    ({"glob": (0.85, 0.90)}, "ndcg_at_3 vs global: 0.9000 does not beat 0.9000"),  # a tie fails
    ({"melu": (float("nan"), 0.9)}, "no finite value for candidate"),
])
def test_fails_against_a_baseline(kwargs, fragment):
    d = gate(report(**kwargs), None, POLICY)
    assert not d.passed
    assert any(fragment in r for r in d.reasons), d.reasons


def test_missing_baseline_or_scenario_fails():
    d = gate(report(), None, GateConfig(baselines=("item_mean", "finetune"),
                                        metrics=("mae",)))
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
