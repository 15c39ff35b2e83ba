"""Registering a model version: upload, verify every file, then move ``challenger``.

A version of ``tracking.registered_model`` exists only for a run whose gate passed; every file
of a version is uploaded and verified before any alias points at it (a failure midway deletes
the version and leaves every alias where it was).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from metarec.config import TrackingConfig
from metarec.evaluation.gate import GateDecision
from metarec.evaluation.report import Report
from metarec.registry.promotion import promote
from metarec.registry.tracking import client, key_metrics, now_iso
from metarec.registry.versions import CHALLENGER, RegistryError

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def _local_files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def remote_files(mlc, run_id: str, path: str) -> dict[str, int]:
    """``{relative path: size}`` of every artifact file under ``path`` of a run."""
    out: dict[str, int] = {}
    stack = [path]
    while stack:
        for info in mlc.list_artifacts(run_id, stack.pop()):
            if info.is_dir:
                stack.append(info.path)
            else:
                out[info.path[len(path) + 1:]] = int(info.file_size or 0)
    return out


def verify_version_files(mlc, run_id: str, expected: Mapping[str, int]) -> None:
    """Raise :class:`RegistryError` unless the run's ``model/`` holds exactly ``expected``."""
    found = remote_files(mlc, run_id, MODEL_DIR)
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or wrong:
        raise RegistryError(f"run {run_id}: model files incomplete (missing {missing}, "
                            f"size differs {wrong})")


def _ensure_registered_model(mlc, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlc.create_registered_model(name)


def register_if_passed(cfg: TrackingConfig, run_id: str, model_dir: str | Path,
                       decision: GateDecision, *, report: Report | None = None,
                       key_metric_names: tuple[str, ...] = (), data_hash: str | None = None,
                       git_sha: str | None = None, dagster_run_id: str | None = None,
                       auto_promote: bool = False, actor: str | None = None) -> int | None:
    """Register ``model_dir`` as a new version aliased ``challenger`` if the gate passed.

    Returns the version number, or None (nothing written) when the verdict failed. Order:
    upload ``model/``, create the version, verify its files, then move the alias; a failure
    after creation deletes the version so no alias can ever point at a half-written one.
    """
    if not decision.passed or not decision.consistent():
        log.info("gate failed for run %s: nothing registered (%s)", run_id,
                 "; ".join(decision.reasons))
        return None
    model_dir = Path(model_dir)
    expected = _local_files(model_dir) if model_dir.is_dir() else {}
    if not expected:
        raise RegistryError(f"{model_dir}: no model files to register")
    mlc = client(cfg)
    name = cfg.registered_model
    mlc.log_artifacts(run_id, str(model_dir), MODEL_DIR)
    tags = {"data_hash": data_hash, "git_sha": git_sha, "dagster_run_id": dagster_run_id,
            "gate_verdict": decision.to_json(), "registered_at": now_iso()}
    if report is not None:
        tags["key_metrics"] = json.dumps(key_metrics(report, key_metric_names), sort_keys=True)
    _ensure_registered_model(mlc, name)
    source = f"{mlc.get_run(run_id).info.artifact_uri}/{MODEL_DIR}"
    mv = mlc.create_model_version(name, source=source, run_id=run_id,
                                  tags={k: v for k, v in tags.items() if v is not None})
    try:
        verify_version_files(mlc, run_id, expected)
    except Exception:
        mlc.delete_model_version(name, mv.version)
        raise
    mlc.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s as %s", name, mv.version, CHALLENGER)
    if auto_promote:
        promote(cfg, version=int(mv.version), actor=actor or "auto_promote")
    return int(mv.version)
