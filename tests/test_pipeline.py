"""metarec.pipeline: a checkpoint is resumed only by the training it belongs to."""

from __future__ import annotations

import dataclasses

import pytest

from metarec.config import Config
from metarec.pipeline.inputs import Inputs
from metarec.pipeline.train import training_fingerprint


def _inputs(manifest):
    return Inputs(features=None, sets={}, training=("train",), validation=("valid",),
                  manifest=manifest)


def test_fingerprint_follows_training_identity():
    cfg = Config()
    base = training_fingerprint(cfg, _inputs({"data_hash": "a"}))
    assert base == training_fingerprint(cfg, _inputs({"data_hash": "a"}))
    # New data (a scheduled retrain) or other settings: a fresh checkpoint folder.
    assert base != training_fingerprint(cfg, _inputs({"data_hash": "b"}))
    lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1.0))
    assert base != training_fingerprint(lr, _inputs({"data_hash": "a"}))
    learner = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, learner="maml"))
    assert base != training_fingerprint(learner, _inputs({"data_hash": "a"}))
    # Where it runs does not change what it computes.
    cpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu",
                                                             progress=False))
    assert base == training_fingerprint(cpu, _inputs({"data_hash": "a"}))


SUMMARY = {"steps": 150, "best_step": 100, "best_valid_mae": 0.75,
           "history": [{"step": 0.0, "valid_mae": 0.80, "best_valid_mae": 0.80},
                       {"step": 100.0, "valid_mae": 0.75, "best_valid_mae": 0.75}]}


@pytest.mark.parametrize("summary, manifest, gain, training, dropped", [
    (SUMMARY, {"training": ["train"]}, True,
     {"best_step": 100, "steps": 150, "best_valid_mae": 0.75, "start_valid_mae": 0.80}, {}),
    ({**SUMMARY, "best_step": 0, "best_valid_mae": 0.80}, {}, False,
     {"best_step": 0, "steps": 150, "best_valid_mae": 0.80, "start_valid_mae": 0.80}, {}),
    ({**SUMMARY, "criterion": "fallback_shots", "fallback_valid_mae": 0.7,
      "valid_error": "MAE"}, {}, True,
     {"best_step": 100, "steps": 150, "best_valid_mae": 0.75, "start_valid_mae": 0.80,
      "criterion": "fallback_shots", "fallback_valid_mae": 0.7, "valid_error": "MAE"}, {}),
    (None, {"dropped": {"min_ratings": {"users": 3, "ratings": 21}}}, None, {},
     {"min_ratings": {"users": 3, "ratings": 21}}),
])
def test_report_records_training_gain_and_dropped(summary, manifest, gain, training, dropped):
    from metarec.evaluation.report import Report
    from metarec.pipeline.evaluate import annotate_report

    base = Report(candidate="melu", metrics={"test": {"melu": {"mae": 0.8}}})
    report = annotate_report(base, summary, manifest)
    assert report.meta_training_gain is gain and report.training == training
    assert report.dropped == dropped
    assert Report.from_dict(report.to_dict()) == report


def test_malformed_dropped_entry_is_an_error():
    from metarec.evaluation.report import Report
    from metarec.pipeline.evaluate import annotate_report

    base = Report(candidate="melu", metrics={})
    with pytest.raises(ValueError, match="'dropped.min_ratings'"):
        annotate_report(base, None, {"dropped": {"min_ratings": 3}})
