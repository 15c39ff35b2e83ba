"""MLflow records of a study: one run for the study, one nested run per trial.

The study's run is opened by the process that creates the study and its id is kept in the
study's user attributes, so every worker (on any machine) nests its trials under it. A trial's
run holds its settings as params, per-fold metrics (step = fold index), its CV score, standard
error, constraint and duration, and its Optuna state as a tag.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any, Mapping

from metarec.config import TrackingConfig

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs
STUDY_RUN_ATTR = "mlflow_run_id"


def _now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def redact(url: str) -> str:
    """A storage URL without its password (``user:secret@`` -> ``user:***@``)."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail:
        return url
    creds, at, rest = tail.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{head}://{user}{':***' if ':' in creds else ''}@{rest}"


def open_study_run(cfg: TrackingConfig, study_name: str, params: Mapping[str, str],
                   tags: Mapping[str, str]) -> str:
    """Create the study's MLflow run (status RUNNING until the report); returns its id."""
    from mlflow.entities import Param

    from metarec.registry import client, experiment_id

    mlc = client(cfg)
    run = mlc.create_run(experiment_id(cfg, mlc), run_name=f"tune:{study_name}",
                         tags={"metarec.kind": "tuning-study", "optuna.study": study_name,
                               **tags})
    mlc.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def study_run_id(study, wait_s: float = 180.0) -> str | None:
    """The study's MLflow run id; a worker that joined a study its creator is still setting
    up waits up to ``wait_s`` for it (on a fresh PostgreSQL store the creator first builds
    MLflow's tables, which takes a while on a busy machine). Without it, the worker's trial
    runs are logged unnested, and a warning says so."""
    deadline = time.monotonic() + wait_s
    while True:
        found = study.user_attrs.get(STUDY_RUN_ATTR)
        if found:
            return found
        if time.monotonic() > deadline:
            log.warning("study %r has no MLflow run after %.0f s (its creator died while "
                        "setting it up?); this worker's trials are logged without a parent",
                        study.study_name, wait_s)
            return None
        time.sleep(0.5)


class TrialLogger:
    """Logs each trial of one worker as a run nested under the study's run."""

    def __init__(self, cfg: TrackingConfig, parent_run_id: str | None, study_name: str) -> None:
        from metarec.registry import client, experiment_id

        self.mlc = client(cfg)
        self.experiment = experiment_id(cfg, self.mlc)
        self.parent = parent_run_id
        self.study = study_name
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.runs: dict[int, str] = {}

    def _run(self, trial) -> str:
        if trial.number not in self.runs:
            tags = {"metarec.kind": "tuning-trial", "optuna.study": self.study,
                    "optuna.trial": str(trial.number), "metarec.worker": self.worker}
            if self.parent:
                tags[PARENT_TAG] = self.parent
            run = self.mlc.create_run(self.experiment, run_name=f"trial-{trial.number}",
                                      tags=tags)
            self.runs[trial.number] = run.info.run_id
        return self.runs[trial.number]

    def on_fold(self, trial, fold: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        self.mlc.log_batch(self._run(trial), metrics=[
            Metric(k, float(v), stamp, fold) for k, v in metrics.items()])

    def on_end(self, trial, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._run(trial)
        stamp = _now_ms()
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in summary.get("params", {}).items()]
        metrics = [Metric("duration_s", float(summary["seconds"]), stamp, 0),
                   Metric("folds_done", float(summary.get("folds_done", 0)), stamp, 0)]
        metrics += [Metric(k, float(v), stamp, 0) for k, v in summary.items()
                    if (k.startswith("cv_") or k == "constraint_violation")
                    and isinstance(v, (int, float))]
        state = summary.get("state", "FAIL")
        tags = [RunTag("optuna.state", state), RunTag("metarec.reference",
                                                      str(summary.get("reference", False)))]
        if "error" in summary:
            tags.append(RunTag("error", str(summary["error"])[:5000]))
        self.mlc.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        self.mlc.set_terminated(run_id, "FAILED" if state == "FAIL" else "FINISHED")


def close_study_run(cfg: TrackingConfig, run_id: str, metrics: Mapping[str, float],
                    tags: Mapping[str, str], files: Mapping[str, str]) -> None:
    """Record the study's outcome on its run (best score, paired difference, the overrides
    file as an artifact) and mark it finished; a later report updates it again."""
    from mlflow.entities import Metric, RunTag

    from metarec.registry import client

    mlc = client(cfg)
    stamp = _now_ms()
    mlc.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
                  tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    for folder, path in files.items():
        mlc.log_artifact(run_id, path, folder)
    mlc.set_terminated(run_id, "FINISHED")
