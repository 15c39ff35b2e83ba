"""Immutable model versions: a folder of its own per version, and sha256 checks on every read.

Registering writes a version's files once, into ``versions/<token>`` of its MLflow run (a fresh
random token per registration; a folder that already holds anything is never written to), and
records on the model version, in the registry's database:

- ``artifact_path``: that folder, relative to the run's artifact root;
- ``artifact_sha256``: ``{relative path: sha256 hex}`` of every file in it (JSON).

Whoever reads a version back (registration's own check after the upload, the gate reading the
champion's report, serving loading ``models:/name@alias``) downloads the folder and checks it
against those digests: a file changed, added or removed after registration is refused with an
:class:`IntegrityError` naming it. Nothing in metarec ever writes into an existing version
folder, so a later export or registration cannot change what a version serves.

Torch-free and MLflow-lazy: :mod:`metarec.serve` calls :func:`fetch_verified`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

from metarec.io import file_sha256

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
PATH_TAG = "artifact_path"
SHA_TAG = "artifact_sha256"


class IntegrityError(RuntimeError):
    """A version's files do not match the digests recorded at registration (or it has none)."""


def folder_manifest(folder: str | Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``folder`` (sorted).

    Anything that is not a regular file (a dangling link, a pipe) is an error naming it: a
    version holds plain files only.
    """
    folder = Path(folder)
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(folder).as_posix()
        if not p.is_file():
            raise IntegrityError(f"{p}: not a regular file; a model version holds plain files")
        out[rel] = file_sha256(p)
    return out


def new_version_path() -> str:
    """A fresh folder name for one registration: ``versions/<32 hex digits>``."""
    return f"{VERSIONS_DIR}/{uuid.uuid4().hex}"


def check_folder(folder: str | Path, manifest: Mapping[str, str], what: str) -> None:
    """Raise :class:`IntegrityError` unless ``folder`` holds exactly ``manifest``'s files with
    their digests; ``what`` names the version in the message."""
    found = folder_manifest(folder)
    missing = sorted(set(manifest) - set(found))
    extra = sorted(set(found) - set(manifest))
    changed = sorted(k for k in set(manifest) & set(found) if manifest[k] != found[k])
    if missing or extra or changed:
        details = [f"{k}: sha256 {found[k][:12]}... but {manifest[k][:12]}... was registered"
                   for k in changed]
        details += [f"missing {missing}"] if missing else []
        details += [f"not registered {extra}"] if extra else []
        raise IntegrityError(f"{what}: its files differ from those recorded at registration "
                             f"({'; '.join(details)}); refusing to use them")


def recorded(tags: Mapping[str, str], what: str) -> tuple[str, dict[str, str]]:
    """The version folder and digests a version's tags record; IntegrityError when absent."""
    path, raw = tags.get(PATH_TAG), tags.get(SHA_TAG)
    if not path or not raw:
        raise IntegrityError(f"{what} records no sha256 of its files (registered before "
                             "immutable versions): it cannot be verified; register the model "
                             "again")
    return path, json.loads(raw)


def download_version(mlc: Any, mv: Any, dest: str | Path) -> Path:
    """Download model version ``mv``'s folder into ``dest`` and verify every file; returns the
    local folder (the export: ``metadata.json``, ``model.onnx``...)."""
    what = f"{mv.name} version {mv.version} (run {mv.run_id})"
    path, manifest = recorded(mv.tags or {}, what)
    local = Path(mlc.download_artifacts(mv.run_id, path, str(dest)))
    check_folder(local, manifest, what)
    return local


def read_verified(mlc: Any, mv: Any, rel: str) -> bytes:
    """One file of version ``mv`` (``rel``: its path inside the version), checked against
    the recorded digest."""
    what = f"{mv.name} version {mv.version} (run {mv.run_id})"
    path, manifest = recorded(mv.tags or {}, what)
    if rel not in manifest:
        raise IntegrityError(f"{what}: no {rel} among its registered files")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlc.download_artifacts(mv.run_id, f"{path}/{rel}", tmp))
        if file_sha256(local) != manifest[rel]:
            raise IntegrityError(f"{what}: {rel} differs from the file recorded at "
                                 "registration; refusing to use it")
        return local.read_bytes()


def parse_models_uri(uri: str) -> tuple[str, str | None, int | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, 3)."""
    body = uri[len("models:/"):]
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias:
            return name, alias, None
    else:
        name, _, version = body.rpartition("/")
        if name and version.isdigit():
            return name, None, int(version)
    raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def fetch_verified(uri: str, tracking_uri: str | None = None,
                   dest: str | Path | None = None) -> Path:
    """A verified local copy of the registered version ``uri`` names (``models:/...``), in
    ``dest`` (default: a new temporary directory the caller owns).

    The alias is resolved once to a version number, then that version's own folder is
    downloaded and checked, so an alias moving meanwhile cannot mix two versions. The tracking
    URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking_uri``.
    """
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_models_uri(uri)
    store = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    mlc = MlflowClient(tracking_uri=store, registry_uri=store)
    mv = (mlc.get_model_version_by_alias(name, alias) if alias is not None
          else mlc.get_model_version(name, str(version)))
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="metarec-model-"))
    local = download_version(mlc, mv, dest)
    log.info("%s: version %s, %d files verified (sha256)", uri, mv.version,
             len(json.loads(mv.tags[SHA_TAG])))
    return local
