"""The versions of one model's catalog, each written once into a folder of its own.

Layout under ``catalog.dir`` (one folder per model: a catalog belongs to the item tower that
made its vectors)::

    <catalog.dir>/<model key>/v000002/   manifest.json + arrays (metarec.catalog.artifact)
    <catalog.dir>/<model key>/v000003/
    <catalog.dir>/<model key>/LATEST     "v000003": the version serving picks up

Version 1 is the export's own ``catalog/`` (it travels with the model, and with a registered
version). A new version is derived from the latest one under an exclusive lock (two writers
never both make version n), written into a temporary folder, made read-only and renamed into
place; only then does ``LATEST`` move (one atomic rename), so a reader sees a complete version
or the previous one. Nothing ever writes into an existing version folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from metarec.catalog.artifact import Catalog, read_catalog, write_catalog
from metarec.io import atomic_file

log = logging.getLogger(__name__)

LATEST = "LATEST"

Derive = Callable[[Catalog], tuple[Catalog, dict[str, Any]]]


def version_name(version: int) -> str:
    return f"v{version:06d}"


class CatalogStore:
    """The catalog versions of the model ``model_key``; ``base``: its version 1 (the export's
    ``catalog/``)."""

    def __init__(self, root: str | Path, model_key: str, base: str | Path) -> None:
        self.folder = Path(root) / model_key
        self.model_key = model_key
        self.base = Path(base)

    def latest_version(self) -> int:
        """The version ``LATEST`` names (1, the export's, before any was written)."""
        try:
            name = (self.folder / LATEST).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return 1
        if not (name.startswith("v") and name[1:].isdigit()):
            raise ValueError(f"{self.folder / LATEST}: {name!r} names no catalog version")
        return int(name[1:])

    def path(self, version: int) -> Path:
        return self.base if version == 1 else self.folder / version_name(version)

    def read(self, version: int | None = None, *, mmap: bool = True) -> Catalog:
        """A version (default: the latest), verified; refused if it is another model's."""
        version = self.latest_version() if version is None else version
        catalog = read_catalog(self.path(version), mmap=mmap)
        if catalog.model_key != self.model_key or catalog.version != version:
            raise ValueError(f"{self.path(version)} holds version {catalog.version} of model "
                             f"{catalog.model_key}, not version {version} of {self.model_key}")
        return catalog

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def adopt(self, folder: str | Path) -> int:
        """Take a verified catalog version written elsewhere (the registry's, downloaded) into
        the store when the store lacks it, and point ``LATEST`` at it when it is newer; its
        version number."""
        catalog = read_catalog(folder, mmap=False)
        if catalog.model_key != self.model_key:
            raise ValueError(f"{folder}: a catalog of model {catalog.model_key}, not "
                             f"{self.model_key}")
        with self._locked():
            final = self.path(catalog.version)
            if catalog.version > 1 and not final.exists():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
                try:
                    for p in Path(folder).iterdir():
                        shutil.copy2(p, tmp / p.name)
                        (tmp / p.name).chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                    os.rename(tmp, final)
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
            if catalog.version > self.latest_version():
                with atomic_file(self.folder / LATEST) as fh:
                    fh.write(version_name(catalog.version) + "\n")
        return catalog.version

    def publish(self, derive: Derive, lineage: Mapping[str, Any] | None = None
                ) -> tuple[Catalog, Path]:
        """Write the version ``derive(latest)`` makes (with the changes it reports) as the
        next version and point ``LATEST`` at it; returns it (read back, verified) and its
        folder. An exception anywhere leaves the store as it was."""
        with self._locked():
            parent = self.read(mmap=False)
            catalog, changes = derive(parent)
            version = parent.version + 1
            final = self.path(version)
            if final.exists():
                raise FileExistsError(f"{final} exists: catalog versions are never rewritten")
            tmp = Path(tempfile.mkdtemp(prefix=f".{version_name(version)}.", dir=self.folder))
            try:
                write_catalog(tmp, catalog, {
                    "version": version, "parent": parent.version,
                    "parent_content_hash": parent.content_hash, "model_key": self.model_key,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "changes": changes, "model": dict(lineage or {})})
                for p in tmp.iterdir():  # a version is read-only once written
                    p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            with atomic_file(self.folder / LATEST) as fh:
                fh.write(version_name(version) + "\n")
        log.info("catalog version %d of model %s: %s -> %s", version, self.model_key, changes,
                 final)
        return self.read(version), final
