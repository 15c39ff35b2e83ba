"""MLflow tracking: the client, the experiment and one run per training.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.tracking_uri``
(``sqlite:///mlflow.db``: a database in the working directory, with the experiment's artifacts
beside it under ``tracking.artifact_root``). Everything goes through an explicit
:class:`~mlflow.tracking.MlflowClient`; nothing sets MLflow's global state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from metarec.config import TrackingConfig
from metarec.evaluation.gate import GateDecision
from metarec.evaluation.report import Report

log = logging.getLogger(__name__)


def tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``cfg.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    """The experiment's artifact location: beside a SQLite database; the server's default else."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent / cfg.artifact_root).resolve().as_uri()


def client(cfg: TrackingConfig):
    """An MlflowClient on the tracking (and registry) URI."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(cfg: TrackingConfig, mlc=None) -> str:
    """The id of ``cfg.experiment``, created (with an explicit artifact location) if absent."""
    mlc = mlc or client(cfg)
    exp = mlc.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    return mlc.create_experiment(cfg.experiment,
                                 artifact_location=artifact_location(cfg, tracking_uri(cfg)))


def now_iso() -> str:
    """Now in UTC, ISO 8601 to the second: the time tags of versions and promotions."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def key_metrics(report: Report, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The candidate's ``metrics`` per scenario: ``{scenario: {metric: value}}``."""
    return {s: {m: by[report.candidate][m] for m in metrics if m in by.get(report.candidate, {})}
            for s, by in report.metrics.items()}


# --------------------------------------------------------------------------- training runs


def log_training_run(cfg: TrackingConfig, *, params: Mapping[str, Any],
                     epoch_metrics: list[Mapping[str, float]] = (),
                     report: Report | None = None, report_dir: str | Path | None = None,
                     decision: GateDecision | None = None,
                     artifacts: Mapping[str, str | Path] | None = None,
                     data_hash: str | None = None, git_sha: str | None = None,
                     dagster_run_id: str | None = None, run_name: str | None = None,
                     run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Record one training as an MLflow run; returns its run id.

    With ``run_id``, the run the training step opened is completed instead of a new one
    created (its params are already logged; ``params`` is then ignored).

    ``params``: nested config dict (flattened to dotted keys); ``epoch_metrics``: one mapping per
    step (its index is the step); ``report_dir``: the folder written by
    :func:`metarec.evaluation.output.write_report`, logged under ``evaluation/``; ``artifacts``:
    ``{artifact folder: local file or folder}`` (encoders, checkpoint, ONNX model...);
    ``tags``: more run tags (e.g. the tuned overrides the training used).
    The run ends FINISHED, or FAILED when an upload raises (the error propagates).
    """
    from mlflow.entities import Metric, Param, RunTag

    mlc = client(cfg)
    tags = {"data_hash": data_hash, "git_sha": git_sha, "dagster_run_id": dagster_run_id,
            **(tags or {})}
    if decision is not None:
        # Run tags hold at most 8000 characters: the full verdict is evaluation/gate_verdict.json.
        tags["gate_verdict"] = "passed" if decision.passed else "failed"
        tags["gate_reasons"] = "\n".join(decision.reasons)[:7000]
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    new = run_id is None
    if new:
        run_id = mlc.create_run(experiment_id(cfg, mlc), run_name=run_name, tags=tags).info.run_id
    else:
        mlc.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    try:
        flat = [Param(k, v[:6000]) for k, v in _flatten(params).items()] if new else []
        for i in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
            mlc.log_batch(run_id, params=flat[i:i + 100])
        stamp = int(datetime.now(timezone.utc).timestamp() * 1000)
        rows = [Metric(k, float(v), stamp, step) for step, values in enumerate(epoch_metrics)
                for k, v in values.items()]
        if report is not None:
            rows += [Metric(f"{s}/{m}", float(v), stamp, 0)
                     for s, vals in key_metrics(report, _all_metrics(report)).items()
                     for m, v in vals.items()]
        for i in range(0, len(rows), 1000):
            mlc.log_batch(run_id, metrics=rows[i:i + 1000])
        if report_dir is not None:
            mlc.log_artifacts(run_id, str(report_dir), "evaluation")
        elif report is not None:
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "report.json").write_text(report.to_json(), encoding="utf-8")
                mlc.log_artifacts(run_id, tmp, "evaluation")
        if decision is not None:
            mlc.log_dict(run_id, decision.to_dict(), "evaluation/gate_verdict.json")
        for name, path in (artifacts or {}).items():
            path = Path(path)
            if path.is_dir():
                mlc.log_artifacts(run_id, str(path), name)
            elif path.exists():
                mlc.log_artifact(run_id, str(path), name)
            else:
                raise FileNotFoundError(f"artifact {name!r}: {path} does not exist")
    except Exception:
        mlc.set_terminated(run_id, "FAILED")
        raise
    mlc.set_terminated(run_id, "FINISHED")
    log.info("logged MLflow run %s", run_id)
    return run_id


def run_url(cfg: TrackingConfig, run_id: str) -> str:
    """Where a person finds the run: the tracking server's page, or the store to open with
    `mlflow ui --backend-store-uri ...` for a local store."""
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id(cfg)}/runs/{run_id}"
    return f"{uri} (run {run_id}; browse with `mlflow ui --backend-store-uri {uri}`)"


def _all_metrics(report: Report) -> tuple[str, ...]:
    return tuple(sorted({m for by in report.metrics.values()
                         for m in by.get(report.candidate, {})}))
