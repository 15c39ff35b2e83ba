"""The tuning stage: run trials of the study, then report it and write the overrides file.

`metarec tune` and the Dagster job `tune` call :func:`tune_study`; `metarec tune --worker`
only runs trials (:func:`metarec.tuning.study.run_worker`), and a later `metarec tune` (which
finds the study complete) writes the report. The configuration handed in is the base one:
params.yaml without the overrides of an earlier study (``load_config(..., overrides=False)``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from metarec.config import Config
from metarec.io import write_json
from metarec.tuning.overrides import StudyReport, study_report, write_overrides
from metarec.tuning.study import WorkerResult, open_study, run_worker
from metarec.tuning.tracking import STUDY_RUN_ATTR, close_study_run, redact

REPORT_FILE = "report.json"


@dataclass
class TuneOutcome:
    """A worker's trials, and (unless only a worker) the study's report and overrides file."""

    worker: WorkerResult
    report: StudyReport | None = None
    overrides: Path | None = None
    mlflow_run_id: str | None = None


def tune_study(cfg: Config, storage_url: str | None = None, worker: bool = False,
               max_trials: int | None = None) -> TuneOutcome:
    """Run trials until the study holds ``tune.n_trials``; then (not ``worker``) report it."""
    result = run_worker(cfg, storage_url, worker=worker, max_trials=max_trials)
    if worker:
        return TuneOutcome(result, mlflow_run_id=result.mlflow_run_id)
    report, path, run_id = report_study(cfg, storage_url)
    return TuneOutcome(result, report, path, run_id)


def report_study(cfg: Config, storage_url: str | None = None
                 ) -> tuple[StudyReport, Path | None, str | None]:
    """Read the study back: its report (``tune.out_dir/<study>/report.json``), the overrides
    file (when a feasible trial completed) and the outcome on the study's MLflow run."""
    study = open_study(cfg, storage_url)
    label = redact(storage_url or cfg.tune.storage)
    report = study_report(cfg, study)
    path = write_overrides(cfg, report, label) if report.best is not None else None
    out = Path(cfg.tune.out_dir) / cfg.tune.study / REPORT_FILE
    write_json(out, {**asdict(report), "storage": label,
                     "overrides_file": None if path is None else str(path)})
    run_id = study.user_attrs.get(STUDY_RUN_ATTR)
    if run_id:
        metrics = {k: v for k, v in {
            f"best_cv_{report.metric}": report.best_value, "best_cv_se": report.best_se,
            f"current_cv_{report.metric}": report.reference_value,
            "difference": report.difference, "difference_se": report.difference_se,
            **{f"trials_{k.lower()}": n for k, n in report.counts.items()},
            **{f"trial_seconds_{k}": v for k, v in report.trial_seconds.items()}}.items()
            if v is not None}
        tags = {"best_trial": report.best, "best_params": json.dumps(report.best_params)}
        files = {"tuning": str(out), **({"tuning/overrides": str(path)} if path else {})}
        close_study_run(cfg.tracking, run_id, metrics, {k: v for k, v in tags.items()
                                                        if v is not None}, files)
    return report, path, run_id
