"""One run at a time per workspace, and a folder of its own for each pipeline run's outputs.

A workspace is the checkout a run works in (the current directory: the paths of params.yaml
are relative to it). Its data stages (``data/``, prepared tables, features, tasks) are shared,
so two runs in one workspace would rebuild them under each other: :func:`workspace_lock` lets
one ``metarec pipeline run`` (or model-stage command) hold the workspace and refuses a second
at once with who holds it. It is an OS file lock (``filelock``, flock on Unix): the kernel
releases it when the holder exits, however it exits, so a crash never leaves it stuck.

The model stages of a pipeline run write into :func:`run_outputs` folders
(``artifacts/runs/<run key>/{train,evaluation,export}``), so runs on one Dagster instance
(several run workers, a re-execution) never read each other's summary, report or export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from metarec.config import Config

LOCK_DIR = ".metarec"
LOCK_FILE = "workspace.lock"
HOLDER_FILE = "workspace.holder.json"
RUNS_DIR = "runs"
_RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace; the message names it (command, pid, host, since)."""


def _holder_text(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that is starting (its record is not written yet)"
    run = f", Dagster run {holder['dagster_run_id']}" if holder.get("dagster_run_id") else ""
    return (f"`{holder.get('command')}` (pid {holder.get('pid')} on {holder.get('host')}, "
            f"user {holder.get('user')}{run}, since {holder.get('since')})")


def read_holder(root: str | Path = ".") -> dict[str, Any] | None:
    """What the current holder recorded of itself (None: nobody, or not written yet)."""
    try:
        return json.loads((Path(root) / LOCK_DIR / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def workspace_lock(command: str, root: str | Path = ".",
                   **details: Any) -> Iterator[dict[str, Any]]:
    """Hold the workspace ``root`` for the block, or raise :class:`WorkspaceBusy` at once.

    ``command`` and ``details`` (e.g. ``dagster_run_id``) are recorded beside the lock for the
    message a refused run prints; the record is removed when the block ends.
    """
    from filelock import FileLock, Timeout

    folder = Path(root) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise WorkspaceBusy(
            f"workspace {Path(root).resolve()} is busy: {_holder_text(read_holder(root))} "
            f"holds {folder / LOCK_FILE}. One run at a time per workspace: wait for it to "
            "finish (or work in another checkout)") from None
    holder = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
              "user": getpass.getuser(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    record = folder / HOLDER_FILE
    try:
        record.write_text(json.dumps(holder, indent=2), encoding="utf-8")
        yield holder
    finally:
        record.unlink(missing_ok=True)
        lock.release()


def run_outputs(cfg: Config, run_key: str) -> Config:
    """``cfg`` with the model stages' folders moved into a folder of run ``run_key``'s own.

    ``train.out_dir`` ``artifacts/train`` becomes ``artifacts/runs/<run_key>/train`` (likewise
    ``evaluation`` and ``export``); the data stages' folders stay shared.
    """
    if not _RUN_KEY.fullmatch(run_key):
        raise ValueError(f"run key {run_key!r}: letters, digits, '_', '.', '-' only")

    def moved(out_dir: str) -> str:
        path = Path(out_dir)
        return str(path.parent / RUNS_DIR / run_key / path.name)

    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, out_dir=moved(cfg.train.out_dir)),
        evaluation=dataclasses.replace(cfg.evaluation, out_dir=moved(cfg.evaluation.out_dir)),
        export=dataclasses.replace(cfg.export, out_dir=moved(cfg.export.out_dir)))
