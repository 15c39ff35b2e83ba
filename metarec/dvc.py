"""DVC glue: the dataset's content hash, data.dvc, and recording new dataset versions.

The raw data directory is tracked by ``data.dvc``. Its md5 is DVC's directory hash: the md5 of
the JSON list of ``{"md5", "relpath"}`` entries of every file, sorted by path, plus ``.dir``.
We compute it ourselves (fast, no repo needed) and let DVC itself write data.dvc and the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from metarec.children import run_child
from metarec.io import file_md5

log = logging.getLogger(__name__)


class DatasetVersionError(RuntimeError):
    """The data on disk is not the version data.dvc records."""


@dataclass(frozen=True)
class DvcOut:
    """The tracked output recorded in a .dvc file."""

    path: str
    md5: str
    nfiles: int | None
    size: int | None


def dir_md5(folder: str | Path) -> str:
    """DVC 3's md5 of a directory (``<hex>.dir``), as written into a .dvc file."""
    folder = Path(folder)
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        entries.append({"md5": file_md5(path), "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    payload = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(payload).hexdigest() + ".dir"


def read_dvc_file(dvc_file: str | Path) -> DvcOut:
    """The single output recorded in a .dvc file such as data.dvc."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise FileNotFoundError(f"{dvc_file}: not found")
    raw = yaml.safe_load(dvc_file.read_text()) or {}
    outs = raw.get("outs") or []
    if len(outs) != 1 or "md5" not in outs[0]:
        raise DatasetVersionError(f"{dvc_file}: expected one output with an md5, got {outs!r}")
    out = outs[0]
    return DvcOut(path=out["path"], md5=out["md5"], nfiles=out.get("nfiles"),
                  size=out.get("size"))


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: analytics off."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true"}


def run_dvc(*args: str, cwd: str | Path = ".") -> str:
    """Run the DVC CLI of this interpreter's environment; raise with its stderr on failure.
    The DVC process ends with this one (:func:`metarec.children.run_child`)."""
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = run_child(cmd, cwd=cwd, env=dvc_env())
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ensure_dvc_repo(root: str | Path) -> None:
    """``dvc init`` where no .dvc/ exists (inside a git repo when there is one)."""
    root = Path(root)
    if (root / ".dvc").is_dir():
        return
    args = ["init", "-q"] if (root / ".git").exists() else ["init", "-q", "--no-scm"]
    run_dvc(*args, cwd=root)
    run_dvc("config", "core.analytics", "false", cwd=root)


def record_version(data_dir: str | Path, root: str | Path = ".") -> DvcOut:
    """``dvc add`` the data directory: caches it and rewrites its .dvc file; returns the record."""
    root = Path(root)
    ensure_dvc_repo(root)
    rel = Path(data_dir).resolve().relative_to(root.resolve())
    run_dvc("add", "-q", str(rel), cwd=root)
    return read_dvc_file(root / f"{rel}.dvc")


def checkout_version(dvc_file: str | Path, root: str | Path = ".") -> DvcOut:
    """``dvc checkout`` the version a .dvc file records from the local cache into the
    workspace (RuntimeError with DVC's message when the cache lacks it); returns the record."""
    root = Path(root)
    rel = Path(dvc_file).resolve().relative_to(root.resolve())
    run_dvc("checkout", "-q", "--force", str(rel), cwd=root)
    return read_dvc_file(root / rel)
def stage_params(root: str | Path, stage: str) -> list[str] | None:
    """The params.yaml keys ``stage`` of ``root``/dvc.yaml depends on; None when there is no
    such stage (or no dvc.yaml)."""
    dvc_yaml = Path(root) / "dvc.yaml"
    if not dvc_yaml.exists():
        return None
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    if stage not in stages:
        return None
    return [k for k in stages[stage].get("params") or [] if isinstance(k, str)]


def _section(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def record_stage(stage: str, cfg: Any, root: str | Path = ".",
                 params_file: str = "params.yaml") -> str:
    """Record in dvc.lock and the DVC cache the outputs of ``stage`` that the pipeline built
    itself (``dvc commit``), as `dvc repro` would have, so `dvc status` stays clean after
    `metarec pipeline run`; returns what was done, in words.

    Only when ``root`` holds a DVC repo whose dvc.yaml declares ``stage`` and the run's
    configuration ``cfg`` (a :class:`metarec.config.Config`) equals ``params_file``'s in every
    section the stage lists: a run with other params would otherwise pair these outputs with
    parameters they were not built from, so dvc.lock is then left as it was (and says so).
    """
    from metarec.config import load_config

    root = Path(root)
    keys = stage_params(root, stage)
    if keys is None or not (root / ".dvc").is_dir():
        return f"no DVC stage {stage!r} in {root / 'dvc.yaml'}; dvc.lock not touched"
    path = root / params_file
    written = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    absent = [k for k in keys if k.split(".")[0] not in written]
    repo_cfg = load_config(path) if path.exists() else None
    differ = [k for k in keys if repo_cfg is None or _section(cfg, k) != _section(repo_cfg, k)]
    if absent or differ:
        why = (f"{params_file} lacks {', '.join(absent)}" if absent else
               f"this run's {', '.join(differ)} differ from {params_file}'s")
        msg = f"stage {stage!r} not recorded in dvc.lock: {why} (dvc.yaml lists them)"
        log.info(msg)
        return msg
    run_dvc("commit", "--force", stage, cwd=root)
    return f"stage {stage!r} recorded in dvc.lock and the DVC cache"


def dataset_hash(dvc_file: str | Path) -> str:
    """The dataset version recorded in data.dvc (the lineage key for every model)."""
    return read_dvc_file(dvc_file).md5


# --------------------------------------------------------------------------- remote storage

REMOTE_URL_ENV = "METAREC_DVC_REMOTE_URL"
REMOTE_ENDPOINT_ENV = "METAREC_DVC_REMOTE_ENDPOINT"
REMOTE_NAME_ENV = "METAREC_DVC_REMOTE_NAME"
DEFAULT_REMOTE_NAME = "storage"


@dataclass(frozen=True)
class RemoteSettings:
    """A DVC remote: ``url`` such as ``s3://bucket/prefix`` (S3 needs the `scale` extra's
    dvc-s3), ``endpoint_url`` for S3-compatible stores (MinIO, Ceph...), empty for AWS.
    Credentials are never stored: DVC reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""

    url: str
    endpoint_url: str = ""
    name: str = DEFAULT_REMOTE_NAME


def remote_from_env(env: Mapping[str, str] | None = None) -> RemoteSettings | None:
    """METAREC_DVC_REMOTE_URL (+ _ENDPOINT, _NAME) as settings; None when the URL is unset
    (the default: DVC's local cache only)."""
    env = os.environ if env is None else env
    url = env.get(REMOTE_URL_ENV, "").strip()
    if not url:
        return None
    if "://" not in url and not url.startswith("/"):
        raise ValueError(f"{REMOTE_URL_ENV}={url!r}: expected a URL such as s3://bucket/prefix "
                         "or an absolute path")
    return RemoteSettings(url=url, endpoint_url=env.get(REMOTE_ENDPOINT_ENV, "").strip(),
                          name=env.get(REMOTE_NAME_ENV, "").strip() or DEFAULT_REMOTE_NAME)


def configure_remote(settings: RemoteSettings, root: str | Path = ".") -> None:
    """Make ``settings`` the default remote in .dvc/config.local (machine-local, not committed):
    ``dvc remote add --local -d -f`` and, for S3-compatible stores, ``endpointurl``."""
    ensure_dvc_repo(root)
    run_dvc("remote", "add", "--local", "-d", "-f", settings.name, settings.url, cwd=root)
    if settings.endpoint_url:
        run_dvc("remote", "modify", "--local", settings.name, "endpointurl",
                settings.endpoint_url, cwd=root)
    log.info("DVC remote %r -> %s%s", settings.name, settings.url,
             f" (endpoint {settings.endpoint_url})" if settings.endpoint_url else "")


def _remote_args(root: str | Path, settings: RemoteSettings | None) -> list[str]:
    settings = settings or remote_from_env()
    if settings is None:
        return []  # the remote already in .dvc/config(.local); DVC says so if there is none
    configure_remote(settings, root)
    return ["-r", settings.name]


def push_data(root: str | Path = ".", settings: RemoteSettings | None = None,
              targets: tuple[str, ...] = ()) -> str:
    """``dvc push`` the cached data (all .dvc files, or ``targets``) to the remote given, else
    the one in the environment, else the configured default. Returns DVC's output."""
    return run_dvc("push", *_remote_args(root, settings), *targets, cwd=root)


def pull_data(root: str | Path = ".", settings: RemoteSettings | None = None,
              targets: tuple[str, ...] = ()) -> str:
    """``dvc pull``: fetch the versions the .dvc files record from the remote and check them out
    into the workspace. Returns DVC's output."""
    return run_dvc("pull", *_remote_args(root, settings), *targets, cwd=root)
