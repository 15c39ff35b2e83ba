"""The registration stage, written once for the CLI and the Dagster asset:

    gate verdict (re-checked now) -> parity.json -> one model throughout -> MLflow run
    completed -> version + alias

The training run that `meta_model` opened is completed with the report, the verdict and the
lineage; a version aliased ``challenger`` is created only when the gate and the parity check
passed, so the registry never changes on a refused or unchecked model. Training summary,
evaluation report and export each name the trained model they come from (the sha256 of
meta_model.pt): they must all name the same one, so a version never carries one model's files
under another's metrics or MLflow run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from metarec.config import Config
from metarec.evaluation.gate import GateDecision
from metarec.export.runtime import METADATA_FILE
from metarec.feedback.ingest import feedback_lineage
from metarec.pipeline.evaluate import gate_decision, load_report
from metarec.pipeline.export import read_parity
from metarec.pipeline.lineage import git_sha
from metarec.pipeline.train import META_FILE, read_summary, resolved_config


class ParityFailed(RuntimeError):
    """The ONNX graph does not match PyTorch: nothing may be registered."""


class LineageMismatch(RuntimeError):
    """Training summary, evaluation report and export do not all come from one trained model."""


def check_one_model(cfg: Config, summary: Mapping[str, Any], report) -> str:
    """The sha256 of the trained model that summary.json, the report and the export all name;
    :class:`LineageMismatch` naming each side when one is missing or differs."""
    meta = Path(cfg.export.out_dir) / METADATA_FILE
    if not meta.exists():
        raise FileNotFoundError(f"{meta} missing; run `metarec export` first")
    extra = json.loads(meta.read_text(encoding="utf-8")).get("extra", {})
    named = {f"training summary ({cfg.train.out_dir})": summary.get("model_sha256"),
             f"evaluation report ({cfg.evaluation.out_dir})": report.training.get("model_sha256"),
             f"export ({cfg.export.out_dir})": extra.get("model_sha256")}
    if None in named.values() or len(set(named.values())) > 1:
        sides = ", ".join(f"{k}: {(v or 'names no model')[:12]}" for k, v in named.items())
        raise LineageMismatch(f"not one trained model throughout ({sides}); re-run `metarec "
                              "evaluate` and `metarec export` on the model to register "
                              "(nothing registered)")
    return next(iter(named.values()))


@dataclass(frozen=True)
class Registration:
    """What registering did: the MLflow run, the new version (None: the gate refused)."""

    run_id: str
    version: int | None
    decision: GateDecision
    data_hash: str | None

    @property
    def registered(self) -> bool:
        return self.version is not None


def register_candidate(cfg: Config, *, data_hash: str | None,
                       dagster_run_id: str | None = None) -> Registration:
    """Complete the training's MLflow run and register the export if the gate and parity pass.

    The gate is evaluated again here against the registry's current champion (never a stale
    verdict); a failed parity check raises :class:`ParityFailed`, and summary, report and
    export of different trained models :class:`LineageMismatch`, before anything is written.
    """
    from metarec import registry

    report = load_report(cfg)
    summary = read_summary(cfg)
    check_one_model(cfg, summary, report)
    decision = gate_decision(cfg, report)
    parity = read_parity(cfg.export)
    if not parity.get("passed"):
        raise ParityFailed(f"ONNX parity check failed (max |err| {parity.get('max_abs_err')}, "
                           f"tol {parity.get('tol')}): nothing registered")
    sha = git_sha()
    resolved = resolved_config(cfg)  # the settings the model was trained with ("auto" decided)
    opened = summary.get("mlflow_run_id")  # the run the training step opened, if any
    run_id = registry.log_training_run(
        cfg.tracking, params=resolved.to_dict(),
        epoch_metrics=[] if opened else summary.get("history", []),
        report=report, report_dir=cfg.evaluation.out_dir, decision=decision,
        artifacts={"encoders": Path(cfg.features.out_dir) / "encoders.json",
                   **({} if opened else {"checkpoint": Path(cfg.train.out_dir) / META_FILE})},
        data_hash=data_hash, git_sha=sha, dagster_run_id=dagster_run_id, run_id=opened)
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.json"
        params.write_text(json.dumps(resolved.to_dict(), sort_keys=True, default=list), "utf-8")
        version = registry.register_if_passed(
            cfg.tracking, run_id, cfg.export.out_dir, decision, report=report,
            key_metric_names=cfg.gate.metrics, data_hash=data_hash, git_sha=sha,
            dagster_run_id=dagster_run_id, auto_promote=cfg.gate.auto_promote,
            training_files={"meta_model.pt": Path(cfg.train.out_dir) / META_FILE,
                            "encoders.json": Path(cfg.features.out_dir) / "encoders.json",
                            "params.json": params},
            extra_tags=feedback_lineage(cfg))
    return Registration(run_id=run_id, version=version, decision=decision, data_hash=data_hash)
