"""The registered model's versions and aliases, read back: listing and the champion's report.

Each version carries tags written at registration: ``gate_verdict`` (the verdict as JSON),
``key_metrics``, ``data_hash``, ``git_sha``, ``registered_at``, and its files' folder and
sha256 digests (``artifact_path``, ``artifact_sha256``: :mod:`metarec.registry.integrity`).
``challenger`` marks the newest passing version, ``champion`` the one served (moved only by
:mod:`metarec.registry.promotion`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from metarec.config import TrackingConfig
from metarec.evaluation.gate import GateDecision
from metarec.evaluation.report import Report
from metarec.registry.integrity import PATH_TAG, read_verified
from metarec.registry.tracking import client

CHALLENGER = "challenger"
CHAMPION = "champion"
REPORT_FILE = "report.json"
VERDICT_FILE = "gate_verdict.json"
REPORT_PATH = f"evaluation/{REPORT_FILE}"  # inside a version's folder, and (older) of its run


class RegistryError(RuntimeError):
    """A registry operation refused or failed; the message says which version and why."""


@dataclass(frozen=True)
class VersionInfo:
    """One model version as `metarec models` shows it."""

    version: int
    aliases: tuple[str, ...]
    run_id: str
    created: str
    data_hash: str | None
    git_sha: str | None
    gate_passed: bool | None
    key_metrics: dict[str, dict[str, float]]


def aliases(cfg: TrackingConfig, mlc=None) -> dict[str, int]:
    """``{alias: version}`` of the registered model (empty when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    mlc = mlc or client(cfg)
    try:
        rm = mlc.get_registered_model(cfg.registered_model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {a: int(v) for a, v in rm.aliases.items()}


def list_models(cfg: TrackingConfig) -> list[VersionInfo]:
    """Every version of the registered model, newest first, with aliases, lineage and metrics."""
    mlc = client(cfg)
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases(cfg, mlc).items():
        by_version.setdefault(version, []).append(alias)
    out = []
    for mv in mlc.search_model_versions(f"name='{cfg.registered_model}'"):
        tags = mv.tags or {}
        verdict = stored_verdict(tags)
        out.append(VersionInfo(
            version=int(mv.version), aliases=tuple(sorted(by_version.get(int(mv.version), []))),
            run_id=mv.run_id, created=tags.get("registered_at", ""),
            data_hash=tags.get("data_hash"), git_sha=tags.get("git_sha"),
            gate_passed=None if verdict is None else verdict.passed,
            key_metrics=json.loads(tags.get("key_metrics", "{}"))))
    return sorted(out, key=lambda v: -v.version)


def stored_verdict(tags: Mapping[str, str]) -> GateDecision | None:
    """The gate verdict a model version carries in its tags (None: it has none)."""
    raw = tags.get("gate_verdict")
    return None if raw is None else GateDecision.from_json(raw)


def champion_report(cfg: TrackingConfig) -> Report | None:
    """The evaluation report the current champion was registered on (None: no champion),
    read from the champion's own folder and checked against its recorded sha256. Versions
    registered before immutable versions have no such folder: their run's report is read."""
    mlc = client(cfg)
    version = aliases(cfg, mlc).get(CHAMPION)
    if version is None:
        return None
    mv = mlc.get_model_version(cfg.registered_model, str(version))
    try:
        if PATH_TAG in (mv.tags or {}):
            raw = read_verified(mlc, mv, REPORT_PATH)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(mlc.download_artifacts(mv.run_id, REPORT_PATH, tmp)).read_bytes()
    except Exception as exc:  # noqa: BLE001 - re-raised with the version named
        raise RegistryError(f"champion version {version} (run {mv.run_id}): cannot read "
                            f"its {REPORT_PATH}: {exc}") from exc
    return Report.from_dict(json.loads(raw.decode("utf-8")))
