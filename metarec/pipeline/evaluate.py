"""The evaluation stage: the candidate and its baselines on every scenario, and the gate's
verdict on the report (against the registry's champion).

The report also records whether meta-training beat its starting point (from the training's
summary.json), the users/ratings the data rules dropped (the tasks manifest's ``dropped``) and
which trained model it evaluated (``training.model_sha256``: the sha256 of meta_model.pt, which
registration checks against the export's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from metarec.config import Config
from metarec.data.arrays import TaskArrays
from metarec.pipeline.inputs import Inputs, load_inputs
from metarec.io import file_sha256
from metarec.pipeline.train import (META_FILE, build_estimator_and_learner, load_baselines,
                                    load_meta_model, read_summary)

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CHAMPION_METHOD = "champion"  # the registry's champion, re-evaluated on this run's test users


def training_gain(summary: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether meta-training beat its starting point, and the figures that say so.

    ``best_step == 0``: the validated step-0 weights were never bettered, so the learner is
    what meta-training started from (with ``train.fallback_shots``, a best step above 0 may
    come from the fallback criterion: ``criterion`` says which). The figures: best step, steps,
    best validation error (MAE unless ``valid_error`` names another) and the step-0 validation
    error (the first entry of ``history`` at step 0, when logged).
    """
    start = [h["valid_mae"] for h in summary.get("history", [])
             if h.get("step") == 0 and "valid_mae" in h]
    figures = {k: summary[k] for k in ("best_step", "steps", "best_valid_mae", "valid_error",
                                       "prior_shift", "head_factors_choice", "criterion",
                                       "fallback_valid_mae") if k in summary}
    if "model" in summary:
        figures["head_factors"] = summary["model"].get("head_factors")
    if start:
        figures["start_valid_mae"] = start[0]
    return int(summary["best_step"]) > 0, figures


def evaluate_models(cfg: Config, inputs: Inputs | None = None):
    """Candidate and baselines on every evaluation scenario, curves included; writes the
    report into evaluation.out_dir and returns it (a metarec.evaluation.report.Report)."""
    from metarec.evaluation.output import write_report
    from metarec.evaluation.scoring import evaluate_all
    from metarec.training.loop import predict
    from metarec.training.ranking_baselines import RANKING_BASELINES

    from metarec.config.implicit import check_feedback_settings, implicit_evaluation

    check_feedback_settings(cfg)
    inputs = inputs or load_inputs(cfg.features, cfg.tasks)
    if inputs.train.implicit:
        cfg = dataclasses.replace(cfg, evaluation=implicit_evaluation(cfg.evaluation))
    model, learner = load_meta_model(cfg, inputs.features)
    model_sha256 = file_sha256(Path(cfg.train.out_dir) / META_FILE)
    methods: dict[str, Callable[[TaskArrays], np.ndarray]] = {
        cfg.meta.learner: lambda t: predict(model, learner, t, cfg.train)}
    methods.update({n: b.predict for n, b in load_baselines(cfg, inputs).items()})
    champion, champion_note = champion_predictor(cfg, inputs)
    if champion is not None:
        methods[CHAMPION_METHOD] = champion
    report = evaluate_all(methods, {s: inputs.sets[s] for s in inputs.scenarios},
                          cfg.meta.learner, cfg.evaluation, cfg.seed,
                          n_items=len(inputs.features.item_ids), score_only=RANKING_BASELINES)
    report = annotate_report(report, _summary_or_none(cfg), inputs.manifest, model_sha256)
    report.training["champion"] = champion_note
    write_report(report, cfg.evaluation.out_dir, cfg.evaluation.plot_metrics)
    return report


def champion_predictor(cfg: Config, inputs: Inputs
                       ) -> tuple[Callable[[TaskArrays], np.ndarray] | None, dict[str, Any]]:
    """The registry's champion rebuilt on this run's data, to be scored on the same test
    users as the candidate (the gate then compares the two there, not with the champion's
    stored report): its own model/meta settings and meta-parameters (carried by value onto
    this data's encoders, metarec.training.warmstart), item statistics from this run's
    training users. Returns (predict or None, what was done: the report's
    ``training.champion``); when the champion cannot be rebuilt (a version without its
    training state, another architecture) the gate falls back to its stored report."""
    import dataclasses

    from metarec.config import ConfigError, config_from_dict
    from metarec.features.build import load_encoders
    from metarec.training.loop import fit_item_stats, predict
    from metarec.training.warmstart import WarmStartError, load_champion, transfer

    try:
        champ = load_champion(cfg.tracking)
        if champ is None:
            return None, {"evaluated": "none", "reason": "no champion registered"}
        own = config_from_dict(champ.params, f"champion version {champ.version} params")
        ccfg = dataclasses.replace(cfg, model=own.model, meta=own.meta)
        model, learner = build_estimator_and_learner(ccfg, inputs.features)
        transfer(champ, model, learner, load_encoders(cfg.features.out_dir),
                 [int(i) for i in inputs.features.item_ids])
    except (WarmStartError, ConfigError) as exc:
        log.warning("champion not re-evaluated on this data (%s); the gate reads its stored "
                    "report", exc)
        return None, {"evaluated": "stored report", "reason": str(exc)}
    fit_item_stats(model, inputs.train)
    model.eval()
    note = {"evaluated": "here", "version": champ.version, "sha256": champ.sha256}
    return (lambda t: predict(model, learner, t, cfg.train)), note


def _summary_or_none(cfg: Config) -> dict[str, Any] | None:
    try:
        return read_summary(cfg)
    except FileNotFoundError as exc:
        log.warning("%s: the report cannot say whether meta-training gained", exc)
        return None


def annotate_report(report, summary: Mapping[str, Any] | None, manifest: Mapping[str, Any],
                    model_sha256: str | None = None):
    """``report`` with the training gain (``summary``: summary.json, None when missing), the
    tasks manifest's ``dropped`` entry (absent in older manifests: nothing dropped) and the
    evaluated model's sha256 (in ``training``, when given)."""
    from metarec.evaluation.report import dropped_counts

    gain, figures = (None, {}) if summary is None else training_gain(summary)
    if model_sha256 is not None:
        figures = {**figures, "model_sha256": model_sha256}
    return dataclasses.replace(report, meta_training_gain=gain, training=figures,
                               dropped=dropped_counts(manifest.get("dropped", {})))


def load_report(cfg: Config):
    """The report the evaluation stage wrote (a metarec.evaluation.report.Report)."""
    from metarec.evaluation.report import Report

    path = Path(cfg.evaluation.out_dir) / REPORT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run the evaluation first")
    return Report.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _same_champion(decision, report, current: int | None):
    """``decision``, failed when the report re-evaluated a champion that is no longer the
    champion (promoted or rolled back since): its comparison would be with the wrong model."""
    from metarec.evaluation.gate import GateCheck, GateDecision

    here = report.training.get("champion") or {}
    if here.get("evaluated") != "here" or here.get("version") == current:
        return decision
    check = GateCheck("-", "-", "champion", None, None, False,
                      f"the report re-evaluated champion version {here.get('version')}, but "
                      f"the champion is now {current}: evaluate again")
    return GateDecision(False, (check.reason, *decision.reasons), (check, *decision.checks))


def gate_decision(cfg: Config, report=None):
    """The gate verdict of ``report`` (default: the stored one) against the champion; the
    verdict and its reasons are appended to evaluation.out_dir/report.md."""
    from metarec.evaluation.gate import gate
    from metarec.evaluation.output import write_verdict
    from metarec.registry import champion_report

    from metarec.registry import aliases

    report = report or load_report(cfg)
    decision = gate(report, champion_report(cfg.tracking), cfg.gate)
    decision = _same_champion(decision, report, aliases(cfg.tracking).get("champion"))
    write_verdict(report, decision, cfg.evaluation.out_dir)
    return decision
