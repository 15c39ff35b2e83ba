"""The evaluation stage: the candidate and its baselines on every scenario, and the gate's
verdict on the report (against the registry's champion)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from metarec.config import Config
from metarec.data.arrays import TaskArrays
from metarec.pipeline.inputs import Inputs, load_inputs
from metarec.pipeline.train import load_baselines, load_meta_model

REPORT_FILE = "report.json"


def evaluate_models(cfg: Config, inputs: Inputs | None = None):
    """Candidate and baselines on every evaluation scenario, curves included; writes the
    report into evaluation.out_dir and returns it (a metarec.evaluation.report.Report)."""
    from metarec.evaluation.output import write_report
    from metarec.evaluation.scoring import evaluate_all
    from metarec.training.loop import predict

    inputs = inputs or load_inputs(cfg.features, cfg.tasks)
    model, learner = load_meta_model(cfg, inputs.features)
    methods: dict[str, Callable[[TaskArrays], np.ndarray]] = {
        cfg.meta.learner: lambda t: predict(model, learner, t, cfg.train)}
    methods.update({n: b.predict for n, b in load_baselines(cfg, inputs).items()})
    report = evaluate_all(methods, {s: inputs.sets[s] for s in inputs.scenarios},
                          cfg.meta.learner, cfg.evaluation, cfg.seed)
    write_report(report, cfg.evaluation.out_dir, cfg.evaluation.plot_metrics)
    return report


def load_report(cfg: Config):
    """The report the evaluation stage wrote (a metarec.evaluation.report.Report)."""
    from metarec.evaluation.report import Report

    path = Path(cfg.evaluation.out_dir) / REPORT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run the evaluation first")
    return Report.from_dict(json.loads(path.read_text(encoding="utf-8")))


def gate_decision(cfg: Config, report=None):
    """The gate verdict of ``report`` (default: the stored one) against the champion."""
    from metarec.evaluation.gate import gate
    from metarec.registry import champion_report

    report = report or load_report(cfg)
    return gate(report, champion_report(cfg.tracking), cfg.gate)
