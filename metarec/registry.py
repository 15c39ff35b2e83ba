"""MLflow tracking and the model registry: training runs, challenger, champion, rollback.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.tracking_uri``
(``sqlite:///mlflow.db``: a database in the working directory, with the experiment's artifacts
beside it under ``tracking.artifact_root``). Everything goes through an explicit
:class:`~mlflow.tracking.MlflowClient`; nothing sets MLflow's global state.

Registry invariants:
- a model version of ``tracking.registered_model`` exists only for a run whose gate passed;
- every file of a version is uploaded and verified before any alias points at it (a failure
  midway deletes the version and leaves every alias where it was);
- ``challenger`` marks the newest passing version; ``champion`` moves only by :func:`promote`
  (or ``gate.auto_promote``) and :func:`rollback`, each re-checking the version's stored verdict
  and recorded in the registered model's ``champion_history`` tag (a JSON list).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from metarec.config import TrackingConfig
from metarec.evaluation.gate import GateDecision
from metarec.evaluation.report import Report

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
HISTORY_TAG = "champion_history"
MODEL_DIR = "model"
REPORT_PATH = "evaluation/report.json"


class RegistryError(RuntimeError):
    """A registry operation refused or failed; the message says which version and why."""


# --------------------------------------------------------------------------- tracking setup


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


def _now() -> str:
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
                     run_id: str | None = None) -> str:
    """Record one training as an MLflow run; returns its run id.

    With ``run_id``, the run the training step opened is completed instead of a new one
    created (its params are already logged; ``params`` is then ignored).

    ``params``: nested config dict (flattened to dotted keys); ``epoch_metrics``: one mapping per
    step (its index is the step); ``report_dir``: the folder written by
    :func:`metarec.evaluation.output.write_report`, logged under ``evaluation/``; ``artifacts``:
    ``{artifact folder: local file or folder}`` (encoders, checkpoint, ONNX model...).
    The run ends FINISHED, or FAILED when an upload raises (the error propagates).
    """
    from mlflow.entities import Metric, Param, RunTag

    mlc = client(cfg)
    tags = {"data_hash": data_hash, "git_sha": git_sha, "dagster_run_id": dagster_run_id}
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


# --------------------------------------------------------------------------- registration


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
            "gate_verdict": decision.to_json(), "registered_at": _now()}
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


# --------------------------------------------------------------------------- listing


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
        verdict = _verdict(tags)
        out.append(VersionInfo(
            version=int(mv.version), aliases=tuple(sorted(by_version.get(int(mv.version), []))),
            run_id=mv.run_id, created=tags.get("registered_at", ""),
            data_hash=tags.get("data_hash"), git_sha=tags.get("git_sha"),
            gate_passed=None if verdict is None else verdict.passed,
            key_metrics=json.loads(tags.get("key_metrics", "{}"))))
    return sorted(out, key=lambda v: -v.version)


def _verdict(tags: Mapping[str, str]) -> GateDecision | None:
    raw = tags.get("gate_verdict")
    return None if raw is None else GateDecision.from_json(raw)


def champion_report(cfg: TrackingConfig) -> Report | None:
    """The evaluation report of the current champion (None when there is no champion)."""
    mlc = client(cfg)
    version = aliases(cfg, mlc).get(CHAMPION)
    if version is None:
        return None
    mv = mlc.get_model_version(cfg.registered_model, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlc.download_artifacts(mv.run_id, REPORT_PATH, tmp)
        except Exception as exc:  # noqa: BLE001 - re-raised with the version named
            raise RegistryError(f"champion version {version} (run {mv.run_id}): cannot read "
                                f"{REPORT_PATH}: {exc}") from exc
        return Report.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class Promotion:
    """A move of ``champion``: from ``previous`` (None: first champion) to ``version``."""

    version: int
    previous: int | None
    action: str
    actor: str
    at: str


def history(cfg: TrackingConfig, mlc=None) -> list[dict[str, Any]]:
    """The registered model's champion history (oldest first)."""
    mlc = mlc or client(cfg)
    raw = mlc.get_registered_model(cfg.registered_model).tags.get(HISTORY_TAG, "[]")
    return json.loads(raw)


def _champion_stack(entries: list[Mapping[str, Any]]) -> list[int]:
    """Replay the history: a promotion pushes its version, a rollback pops the top one."""
    stack: list[int] = []
    for e in entries:
        if e["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(int(e["version"]))
    return stack


def _check_verdict(mlc, name: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mv = mlc.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: not found") from exc
    verdict = _verdict(mv.tags or {})
    if verdict is None or not verdict.passed or not verdict.consistent():
        raise RegistryError(f"{name} version {version}: its stored gate verdict did not pass; "
                            "refusing to make it champion")


def _move_champion(cfg: TrackingConfig, mlc, version: int, previous: int | None, action: str,
                   actor: str | None, entries: list[dict[str, Any]]) -> Promotion:
    name = cfg.registered_model
    _check_verdict(mlc, name, version)
    done = Promotion(version, previous, action, actor or getpass.getuser(), _now())
    mlc.set_registered_model_alias(name, CHAMPION, str(version))
    mlc.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries + [done.__dict__]))
    for key, value in (("promoted_by", done.actor), ("promoted_at", done.at),
                       ("promoted_from", str(previous)), ("promotion", action)):
        mlc.set_model_version_tag(name, str(version), key, value)
    log.info("%s: champion %s -> %s (%s by %s)", name, previous, version, action, done.actor)
    return done


def promote(cfg: TrackingConfig, version: int | None = None,
            actor: str | None = None) -> Promotion:
    """Point ``champion`` at ``version`` (default: the challenger), re-checking its verdict."""
    mlc = client(cfg)
    current = aliases(cfg, mlc)
    if version is None:
        if CHALLENGER not in current:
            raise RegistryError(f"{cfg.registered_model}: no challenger to promote")
        version = current[CHALLENGER]
    if current.get(CHAMPION) == version:
        raise RegistryError(f"{cfg.registered_model} version {version} is already champion")
    done = _move_champion(cfg, mlc, version, current.get(CHAMPION), "promote", actor,
                          history(cfg, mlc))
    if current.get(CHALLENGER) == version:
        mlc.delete_registered_model_alias(cfg.registered_model, CHALLENGER)
    return done


def rollback(cfg: TrackingConfig, actor: str | None = None) -> Promotion:
    """Point ``champion`` back at the champion before the current one (from the history)."""
    mlc = client(cfg)
    current = aliases(cfg, mlc).get(CHAMPION)
    entries = history(cfg, mlc) if current is not None else []
    stack = _champion_stack(entries)
    if current is None or not stack:
        raise RegistryError(f"{cfg.registered_model}: no champion to roll back")
    if stack[-1] != current:
        raise RegistryError(f"{cfg.registered_model}: champion is version {current} but the "
                            f"history says {stack[-1]}; the alias was moved outside metarec")
    if len(stack) < 2:
        raise RegistryError(f"{cfg.registered_model}: version {current} is the first champion; "
                            "there is nothing to roll back to")
    return _move_champion(cfg, mlc, stack[-2], current, "rollback", actor, entries)
