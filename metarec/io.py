"""Atomic writes: every artifact appears whole or not at all.

Files and directories are written beside their destination under a temporary name and moved
into place with one rename, so an interrupted run never leaves a half-written artifact behind.
A directory's staging copy (``.<name>.<pid>.<random>.tmp``) and the previous version it
replaces (``.<name>.old.<pid>``) carry the writer's process id: a process killed before it could
clean up leaves them, and the next :func:`atomic_dir` on the same destination (or
:func:`clean_stale_staging`) removes those of dead processes, putting a previous version back
if the destination itself is missing. .gitignore ignores them meanwhile.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping


log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_staging(dest: str | Path) -> list[Path]:
    """Remove what writers of ``dest`` that died left beside it (staging copies, the previous
    version), keeping those of live processes; a leftover previous version is moved back when
    ``dest`` is missing (the writer died between the two renames). Returns what was removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    name = re.escape(dest.name)
    staging = re.compile(rf"\.{name}\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp")
    previous = re.compile(rf"\.{name}\.old\.(?P<pid>\d+)")
    removed = []
    for path in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*")):
        match = staging.fullmatch(path.name) or previous.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        pid = match.group("pid")  # None: an unnumbered staging copy of an older release
        if pid is not None and _alive(int(pid)):
            continue
        if match.re is previous and not dest.exists():
            os.replace(path, dest)
            log.warning("%s was missing; restored the previous version from %s", dest, path)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d leftover(s) of interrupted writes of %s: %s", len(removed), dest,
                 ", ".join(p.name for p in removed))
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``dest`` when the block succeeds.

    On an exception the temporary directory is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp",
                                dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual directory mode
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(dest: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file beside ``dest``; it replaces ``dest`` when the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(dest: str | Path, payload: Any) -> None:
    """Write ``payload`` as sorted, indented JSON, atomically (byte-stable for equal input)."""
    with atomic_file(dest) as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file's bytes (the hash DVC uses)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (what a registered version records of each file,
    and the identity of a trained model's state_dict file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state(dest: str | Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` of a dict of tensors/state_dicts to ``dest``, atomically (training
    checkpoints, the trained model, the baseline network)."""
    import torch

    with atomic_file(dest, "wb") as fh:
        torch.save(dict(payload), fh)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a :func:`save_state` file onto the CPU with ``weights_only`` (never unpickles code);
    a missing file is a FileNotFoundError that names it."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run the step that writes it first")
    return torch.load(path, map_location="cpu", weights_only=True)
