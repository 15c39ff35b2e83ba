"""Registering a model version: its own folder, written once, verified, then ``challenger``.

A version of ``tracking.registered_model`` exists only for a run whose gate passed. Its files
go into a fresh folder of its run (``versions/<token>``, see :mod:`metarec.registry.integrity`)
that nothing writes again: the export, plus the evaluation report and the verdict it was
registered on (``evaluation/report.json``, ``evaluation/gate_verdict.json``), and what a warm
start or a re-evaluation on new data needs (``training/meta_model.pt``, ``encoders.json``,
``params.json``: metarec.training.warmstart). The version
records the folder and every file's sha256; after the upload the folder is downloaded and
checked against them before any alias points at the version (a failure midway deletes the
version, leaves every alias where it was and touches no other version's files).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from metarec.config import TrackingConfig
from metarec.evaluation.gate import GateDecision
from metarec.evaluation.report import Report
from metarec.io import write_json
from metarec.registry.integrity import (PATH_TAG, SHA_TAG, download_version, folder_manifest,
                                        new_version_path)
from metarec.registry.promotion import promote
from metarec.registry.tracking import client, key_metrics, now_iso
from metarec.registry.versions import CHALLENGER, REPORT_FILE, VERDICT_FILE, RegistryError

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
TRAINING_DIR = "training"


def _ensure_registered_model(mlc, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlc.create_registered_model(name)


def _stage_evaluation(folder: Path, report: Report | None, decision: GateDecision) -> None:
    """The report and verdict a version is registered on, as files of the version."""
    if report is not None:
        (folder / REPORT_FILE).write_text(report.to_json(), encoding="utf-8")
    write_json(folder / VERDICT_FILE, decision.to_dict())


def _upload(mlc, run_id: str, local: Path, files: list[str], dest: str) -> None:
    """Upload ``files`` (relative to ``local``) under the run's ``dest``, one by one."""
    for rel in files:
        parent = "/".join([dest, *rel.split("/")[:-1]])
        mlc.log_artifact(run_id, str(local / rel), parent)


def register_if_passed(cfg: TrackingConfig, run_id: str, model_dir: str | Path,
                       decision: GateDecision, *, report: Report | None = None,
                       key_metric_names: tuple[str, ...] = (), data_hash: str | None = None,
                       git_sha: str | None = None, dagster_run_id: str | None = None,
                       auto_promote: bool = False, actor: str | None = None,
                       training_files: Mapping[str, str | Path] | None = None,
                       extra_tags: Mapping[str, str] | None = None) -> int | None:
    """Register ``model_dir`` as a new version aliased ``challenger`` if the gate passed.

    Returns the version number, or None (nothing written) when the verdict failed. Order: hash
    the files, upload them into a fresh folder of the run, create the version (recording folder
    and digests), download and verify it, then move the alias; a failure after creation
    deletes the version so no alias can ever point at a half-written or altered one.
    ``training_files``: ``{name: local file}`` stored under ``training/`` (the trained state,
    encoders and params); ``extra_tags``: more lineage tags (the feedback watermark...).
    """
    if not decision.passed or not decision.consistent():
        log.info("gate failed for run %s: nothing registered (%s)", run_id,
                 "; ".join(decision.reasons))
        return None
    model_dir = Path(model_dir)
    files = folder_manifest(model_dir) if model_dir.is_dir() else {}
    if not files:
        raise RegistryError(f"{model_dir}: no model files to register")
    if any(rel.split("/")[0] in (EVALUATION_DIR, TRAINING_DIR) for rel in files):
        raise RegistryError(f"{model_dir}: '{EVALUATION_DIR}' and '{TRAINING_DIR}' are reserved "
                            "for the version's report and training state; an export must not "
                            "contain them")
    mlc = client(cfg)
    name = cfg.registered_model
    path = new_version_path()
    if mlc.list_artifacts(run_id, path):  # never write into a folder that holds anything
        raise RegistryError(f"run {run_id}: {path} already exists; versions are never reused")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as trained:
        _stage_evaluation(Path(tmp), report, decision)
        evaluation = folder_manifest(tmp)
        for file_name, src in (training_files or {}).items():
            shutil.copyfile(src, Path(trained) / file_name)
        training = folder_manifest(trained)
        _upload(mlc, run_id, model_dir, list(files), path)
        _upload(mlc, run_id, Path(tmp), list(evaluation), f"{path}/{EVALUATION_DIR}")
        _upload(mlc, run_id, Path(trained), list(training), f"{path}/{TRAINING_DIR}")
    manifest = {**files, **{f"{EVALUATION_DIR}/{k}": v for k, v in evaluation.items()},
                **{f"{TRAINING_DIR}/{k}": v for k, v in training.items()}}
    tags = {**(extra_tags or {}),
            "data_hash": data_hash, "git_sha": git_sha, "dagster_run_id": dagster_run_id,
            "gate_verdict": decision.to_json(), "registered_at": now_iso(),
            PATH_TAG: path, SHA_TAG: json.dumps(manifest, sort_keys=True)}
    if report is not None:
        tags["key_metrics"] = json.dumps(key_metrics(report, key_metric_names), sort_keys=True)
    _ensure_registered_model(mlc, name)
    source = f"{mlc.get_run(run_id).info.artifact_uri}/{path}"
    mv = mlc.create_model_version(name, source=source, run_id=run_id,
                                  tags={k: v for k, v in tags.items() if v is not None})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            download_version(mlc, mlc.get_model_version(name, mv.version), tmp)
    except Exception:
        mlc.delete_model_version(name, mv.version)
        raise
    mlc.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s as %s (%s, %d files)", name, mv.version, CHALLENGER,
             path, len(manifest))
    if auto_promote:
        promote(cfg, version=int(mv.version), actor=actor or "auto_promote")
    return int(mv.version)
