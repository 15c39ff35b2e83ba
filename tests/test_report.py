"""The report: JSON round trip, markdown tables and the written folder (report files, plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metarec.evaluation.metrics import metric_names
from metarec.evaluation.output import write_report
from metarec.evaluation.report import Report, build_report
from metarec.evaluation.scoring import evaluate_predictions


def test_report_roundtrip_markdown_and_files(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.integers(1, 6, (20, 5)).astype(float)
    mask = np.ones_like(true)
    names = metric_names(("mae", "ndcg"), (3,))
    results = {sc: {m: evaluate_predictions(true + rng.normal(0, s, true.shape), true, mask,
                                            names=names, bootstrap_samples=50, seed=0)
                    for m, s in (("melu", 0.5), ("item_mean", 1.0))}
               for sc in ("warm", "user_cold")}
    curves = {"warm": {"melu": {"0": {"mae": 1.0, "ndcg_at_3": 0.8},
                                "all": {"mae": 0.8, "ndcg_at_3": 0.9}}}}
    report = build_report(results, "melu", curves)
    again = Report.from_dict(json.loads(report.to_json()))
    assert again == report
    md = report.to_markdown()
    assert "| **melu** |" in md and "## user_cold (20 tasks)" in md
    paths = write_report(report, tmp_path / "evaluation", ("mae", "ndcg_at_3"))
    assert sorted(paths) == ["adaptation_mae.png", "adaptation_ndcg_at_3.png", "report.json",
                             "report.md", "scenarios_mae.png", "scenarios_ndcg_at_3.png"]
    for path in paths.values():
        assert path.stat().st_size > 0
    assert paths["scenarios_mae.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no result for the candidate"):
        build_report(results, "maml")


# A report.json as the code before the curve differences wrote it (registry champions keep them).
OLD_REPORT = {
    "candidate": "ridge", "ci_level": 0.95,
    "counts": {"test": {"ridge": {"n_ratings": 580, "n_tasks": 58}}},
    "curves": {"test": {"ridge": {"0": {"mae": 3.688}, "10": {"mae": 0.809},
                                  "3": {"mae": 0.878}, "all": {"mae": 0.7746}}}},
    "intervals": {"test": {"ridge": {"mae": [0.706, 0.8457]}}},
    "metrics": {"test": {"ridge": {"mae": 0.7746}, "item_mean": {"mae": 0.7931}}},
}


def test_old_report_reads_back():
    old = Report.from_dict(OLD_REPORT)
    assert old.value("test", "ridge", "mae") == 0.7746 and old.value("test", "ridge", "mae", "0")
    assert old.curve_differences == {} and old.meta_training_gain is None and old.dropped == {}
    assert old.shots("test") == ["0", "3", "10", "all"]  # not the JSON's text order
    again = Report.from_dict(json.loads(old.to_json()))
    assert again == old and "dropped" not in old.to_dict()
    assert "### Cold-start curve" in old.to_markdown()


def _curve_report(**kw) -> Report:
    from metarec.evaluation.report import PairedDifference

    return Report(
        candidate="melu", metrics={"test": {"melu": {"mae": 0.8}, "item_mean": {"mae": 0.9}}},
        curves={"test": {"melu": {"0": {"mae": 0.95}, "all": {"mae": 0.8}},
                         "item_mean": {"0": {"mae": 0.9}, "all": {"mae": 0.9}}}},
        curve_differences={"test": {"item_mean": {
            "0": {"mae": PairedDifference(0.05, (-0.01, 0.11))},
            "all": {"mae": PairedDifference(-0.1, (-0.15, -0.05))}}}},
        curve_metrics=("mae",), bootstrap_samples=200,
        **{"training": {"best_step": 0, "steps": 150, "best_valid_mae": 0.81}, **kw})


@pytest.mark.parametrize("kw, present, absent", [
    ({"meta_training_gain": False},
     ["**meta_training_gain: false**: meta-training never beat its starting point "
      "(best validation MAE 0.8100 at step 0 of 150)"], ["## Data dropped"]),
    ({"meta_training_gain": True, "dropped": {"min_ratings": {"users": 12, "ratings": 70}}},
     ["meta_training_gain: true", "## Data dropped before the tasks", "| min_ratings | 12 | 70 |"],
     ["false"]),
    ({"meta_training_gain": True,
      "training": {"best_step": 250, "steps": 600, "best_valid_mae": 0.83,
                   "criterion": "fallback_shots", "fallback_valid_mae": 0.79}},
     ["meta_training_gain: true (best validation MAE 0.8300 at step 250 of 600)",
      "**Early stopping fell back** (train.fallback_shots)", "step 250", "(error 0.7900)"],
     ["false"]),
    ({"meta_training_gain": True,  # train.valid_metric: the error named as it was measured
      "training": {"best_step": 300, "steps": 550, "best_valid_mae": 0.2074,
                   "valid_error": "1 - ndcg_at_3"}},
     ["meta_training_gain: true (best validation 1 - ndcg_at_3 0.2074 at step 300 of 550)"],
     ["validation MAE"]),
    ({"meta_training_gain": True,
      "training": {"best_step": 550, "steps": 800, "best_valid_mae": 0.846,
                   "head_factors_choice": {
                       "head_factors": False, "error_without": 0.8454, "error_with": 0.8364,
                       "difference": -0.009, "standard_error": 0.006, "tasks": 58,
                       "rule": "trained over untrained", "criterion": "valid_shots"}}},
     ["model.head_factors auto: without the item-factor head (validation error 0.8364 with, "
      "0.8454 without", "the training that did is kept unless the untrained one is lower by "
      "more than two standard errors)."], ["false"]),
    ({}, ["| mae | item_mean | +0.0500 [-0.0100, +0.1100] | **-0.1000 [-0.1500, -0.0500]** |",
          "| mae | **melu** | 0.9500 | 0.8000 |", "| metric | method | 0 | all |",
          "200 resamples"], ["## Meta-training", "## Data dropped"]),
])
def test_curve_markdown_and_json(kw, present, absent):
    report = _curve_report(**kw)
    raw = json.loads(report.to_json())
    assert Report.from_dict(raw) == report
    assert raw["curve_differences"]["test"]["item_mean"]["all"]["mae"] == {
        "diff": -0.1, "interval": [-0.15, -0.05]}
    assert raw["meta_training_gain"] == kw.get("meta_training_gain")
    assert ("dropped" in raw) is bool(kw.get("dropped"))
    md = report.to_markdown()
    for text in present:
        assert text in md, md
    for text in absent:
        assert text not in md


@pytest.mark.parametrize("dropped, message", [
    ([1, 2], "'dropped' must be a mapping"),
    ({"min_ratings": {"users": 1}}, "'dropped.min_ratings' must be"),
])
def test_malformed_dropped_is_named(dropped, message):
    with pytest.raises(ValueError, match=message):
        Report.from_dict({**OLD_REPORT, "dropped": dropped})
