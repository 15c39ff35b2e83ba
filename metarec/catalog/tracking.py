"""Catalog versions beside their model version in MLflow, with lineage both ways.

A catalog version of a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/N``) is
uploaded into the model version's run, into a folder of its own that nothing writes again
(``catalogs/<model key>/v000002``), downloaded and checked against its sha256 digests, and
only then recorded on the model version (tags: ``catalog_version``, ``catalog_path``,
``catalog_sha256``, ``catalog_content_hash``, ``catalog_model_key``): the model version names
its latest catalog, and each catalog's manifest names the model version it belongs to. Version
1 is part of the registered version's own files. Serving reads these tags to pick up a
catalog written on another machine (:func:`registry_catalog`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from metarec.catalog.artifact import MANIFEST
from metarec.catalog.store import version_name
from metarec.registry.integrity import check_folder, folder_manifest, parse_models_uri

log = logging.getLogger(__name__)

TAGS = ("catalog_version", "catalog_path", "catalog_sha256", "catalog_content_hash",
        "catalog_model_key")


def resolve(uri: str, tracking_uri: str | None) -> tuple[Any, Any]:
    """(MlflowClient, ModelVersion) of a ``models:/`` URI, the alias resolved once."""
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_models_uri(uri)
    store = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    mlc = MlflowClient(tracking_uri=store, registry_uri=store)
    mv = (mlc.get_model_version_by_alias(name, alias) if alias is not None
          else mlc.get_model_version(name, str(version)))
    return mlc, mv


def log_catalog(mlc: Any, mv: Any, folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Upload the catalog version in ``folder`` beside model version ``mv``, verify it, tag
    the version; returns where it went."""
    import tempfile

    folder = Path(folder)
    version = int(manifest["version"])
    path = f"catalogs/{manifest['model_key']}/{version_name(version)}"
    if mlc.list_artifacts(mv.run_id, path):
        raise FileExistsError(f"run {mv.run_id}: {path} already exists; catalog versions are "
                              "never rewritten")
    digests = folder_manifest(folder)
    mlc.log_artifacts(mv.run_id, str(folder), path)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlc.download_artifacts(mv.run_id, path, tmp))
        check_folder(local, digests, f"catalog {path} of run {mv.run_id}")
    tags = {"catalog_version": str(version), "catalog_path": path,
            "catalog_sha256": json.dumps(digests, sort_keys=True),
            "catalog_content_hash": manifest["content_hash"],
            "catalog_model_key": manifest["model_key"]}
    for key, value in tags.items():
        mlc.set_model_version_tag(mv.name, mv.version, key, value)
    log.info("catalog version %d logged beside %s version %s (run %s, %s)", version, mv.name,
             mv.version, mv.run_id, path)
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "path": path}


def registry_catalog(mv: Any) -> tuple[int, str, dict[str, str], str] | None:
    """The latest catalog a model version records: (version, path, digests, model key), or
    None when only its own version 1 exists."""
    tags = mv.tags or {}
    if not all(k in tags for k in TAGS):
        return None
    return (int(tags["catalog_version"]), tags["catalog_path"], json.loads(tags["catalog_sha256"]),
            tags["catalog_model_key"])


def fetch_catalog(mlc: Any, mv: Any, dest: str | Path) -> Path | None:
    """Download and verify the latest catalog model version ``mv`` records into ``dest``;
    None when it records none beyond its own."""
    found = registry_catalog(mv)
    if found is None:
        return None
    version, path, digests, _ = found
    local = Path(mlc.download_artifacts(mv.run_id, path, str(dest)))
    check_folder(local, digests, f"catalog version {version} of {mv.name} version {mv.version}")
    if not (local / MANIFEST).exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST}")
    return local
