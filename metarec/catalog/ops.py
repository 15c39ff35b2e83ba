"""`metarec items add` and `metarec items retire`: a new catalog version, without retraining.

Both open the model (an export folder, or a registered version downloaded and verified),
derive the next catalog version from the latest one, write it into the store
(:class:`~metarec.catalog.store.CatalogStore`) and, for a registered version, log it beside
that version in MLflow (:mod:`metarec.catalog.tracking`). A running `metarec serve` picks the
new version up by itself (it watches the store and the registry), or on ``POST /reload``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from metarec.catalog.artifact import Catalog
from metarec.catalog.items import (ItemsError, NewItems, embed_new_texts, encoder_feed,
                                   read_new_items)
from metarec.catalog.store import CatalogStore
from metarec.config import Config
from metarec.export.runtime import CATALOG_DIR, METADATA_FILE, session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenModel:
    """An export on disk for the length of an operation, and the registry's view of it."""

    uri: str
    export_dir: Path
    meta: dict[str, Any]
    registered: tuple[Any, Any] | None = None  # (MlflowClient, ModelVersion)

    @property
    def entry(self) -> dict[str, Any]:
        entry = self.meta.get("catalog")
        if not entry:
            raise ValueError(f"{self.uri}: exported before catalogs (format "
                             f"{self.meta.get('format_version')}); export it again")
        return entry

    def store(self, root: str | Path) -> CatalogStore:
        """The local store of this model's catalog versions, caught up with the registry: a
        newer version logged beside the registered version (from another machine) is taken
        in first, so a new version always follows the latest one anywhere."""
        store = CatalogStore(root, self.entry["model_key"], self.export_dir / CATALOG_DIR)
        if self.registered is not None:
            from metarec.catalog.tracking import fetch_catalog, registry_catalog

            found = registry_catalog(self.registered[1])
            if found is not None and found[3] == store.model_key \
                    and found[0] > store.latest_version():
                with tempfile.TemporaryDirectory(prefix="metarec-catalog-") as tmp:
                    store.adopt(fetch_catalog(*self.registered, tmp))
        return store

    def lineage(self) -> dict[str, Any]:
        """What a catalog version records of its model."""
        extra = self.meta.get("extra", {})
        out = {"uri": self.uri, "model_sha256": extra.get("model_sha256"),
               "mlflow_run_id": extra.get("mlflow_run_id")}
        if self.registered is not None:
            mv = self.registered[1]
            out["registered"] = {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id}
        return out


@contextmanager
def open_model(uri: str, tracking_uri: str | None) -> Iterator[OpenModel]:
    """The model ``uri`` names: a local export as it is, a ``models:/`` version downloaded
    (verified, into a temporary folder removed afterwards), its alias resolved once."""
    from metarec.serve import is_remote, resolve_model_dir

    if not is_remote(uri):
        folder = resolve_model_dir(uri)
        yield OpenModel(uri, folder, _meta(folder))
        return
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri}: catalogs belong to an export folder or a registered version "
                         "(models:/NAME@ALIAS, models:/NAME/N)")
    from metarec.catalog.tracking import resolve
    from metarec.registry.integrity import download_version

    mlc, mv = resolve(uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="metarec-model-") as tmp:
        folder = download_version(mlc, mv, tmp)
        yield OpenModel(uri, folder, _meta(folder), (mlc, mv))


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class CatalogChange:
    """A catalog version written: what changed, where it is, where MLflow has it."""

    version: int
    folder: Path
    catalog: dict[str, Any]
    added: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    mlflow: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "folder": str(self.folder), **self.catalog,
                "added": self.added, "retired": self.retired, "mlflow": self.mlflow}


def encode_items(model: OpenModel, items: NewItems, cfg: Config) -> dict[str, np.ndarray]:
    """Catalog rows of new items: the text embeddings, then ``item_encoder.onnx``."""
    entry = model.entry
    text = embed_new_texts(items, entry.get("text"), cfg.features) \
        if "item_text" in entry["encoder_inputs"] else None
    feed = encoder_feed(items, entry["item_encoders"], entry["encoder_inputs"], text)
    sess = session(model.export_dir / entry["item_encoder"])
    names = list(entry["encoder_outputs"])
    out = dict(zip(names, sess.run(names, feed)))
    n = len(items.frame)
    return {"vectors": out["item_vecs"], "first": out["item_first"], "offset": out["item_offset"],
            "head": out.get("item_head", np.zeros((n, 0), np.float32))}


def _check_new_ids(items: NewItems, latest: Catalog, where: str) -> None:
    clash = [(i, line) for line, i in enumerate(items.ids.tolist(), 2) if i in latest.row_of]
    if clash:
        raise ItemsError(f"{where}: item id(s) already in catalog version {latest.version} "
                         f"(ids are never reused; retired ones included): "
                         + ", ".join(f"{i} (line {line})" for i, line in clash[:20])
                         + "; nothing was written")


def _finish(model: OpenModel, catalog: Catalog, folder: Path, added: list[int],
            retired: list[int]) -> CatalogChange:
    logged = None
    if model.registered is not None:
        from metarec.catalog.tracking import log_catalog

        logged = log_catalog(*model.registered, folder, catalog.manifest)
    return CatalogChange(catalog.version, folder, catalog.describe(), added, retired, logged)


def add_items(cfg: Config, items_path: str | Path, model_uri: str | None = None) -> CatalogChange:
    """Add the items of ``items_path`` to the latest catalog of ``model_uri`` (default
    ``serve.model_uri``) as a new version; any bad row stops it before anything is written."""
    uri = model_uri or cfg.serve.model_uri
    with open_model(uri, cfg.tracking.tracking_uri) as model:
        entry = model.entry
        if entry.get("item_encoders") is None:
            raise ValueError(f"{uri}: exported without item encoders; items cannot be added")
        items = read_new_items(items_path, entry["item_encoders"], cfg.data, cfg.validation)
        store = model.store(cfg.catalog.dir)
        _check_new_ids(items, store.read(), str(items_path))
        rows = encode_items(model, items, cfg)

        def derive(parent: Catalog) -> tuple[Catalog, dict[str, Any]]:
            _check_new_ids(items, parent, str(items_path))  # a writer may have come between
            return (parent.appended(items.ids, items.titles, rows),
                    {"added": items.ids.tolist(), "source": str(items_path)})

        catalog, folder = store.publish(derive, model.lineage())
        return _finish(model, catalog, folder, items.ids.tolist(), [])


def retire_items(cfg: Config, ids: Sequence[int], model_uri: str | None = None) -> CatalogChange:
    """Retire ``ids`` in a new catalog version: never recommended again, still accepted as a
    user's support ratings."""
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("no item ids to retire")
    uri = model_uri or cfg.serve.model_uri
    with open_model(uri, cfg.tracking.tracking_uri) as model:
        store = model.store(cfg.catalog.dir)

        def derive(parent: Catalog) -> tuple[Catalog, dict[str, Any]]:
            return parent.with_retired(ids), {"retired": ids}

        catalog, folder = store.publish(derive, model.lineage())
        return _finish(model, catalog, folder, [], ids)
