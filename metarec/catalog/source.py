"""Where a serving process finds a model's catalog versions: the store and the registry.

A model's catalog versions live in the local store (``catalog.dir``, written by `metarec items
add/retire` on this machine) and, for a registered model, beside its version in MLflow (written
from any machine). :class:`CatalogSource` answers "which is the latest version" cheaply (a
small file read, one registry call) and loads it verified; version 1 is the export's own
catalog, read when the model is loaded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from metarec.catalog.artifact import Catalog, read_catalog
from metarec.catalog.store import CatalogStore

log = logging.getLogger(__name__)


class CatalogSource:
    """The catalog versions of one model (``model_key``): the store under ``root`` (None: no
    store) and, for a ``models:/`` ``uri``, the registry's record of the latest one."""

    def __init__(self, model_key: str, base: Path, root: str | Path | None, uri: str,
                 tracking_uri: str | None) -> None:
        self.model_key = model_key
        self.store = None if root is None else CatalogStore(root, model_key, base)
        self.base = base
        self.uri = uri if uri.startswith("models:/") else None
        self.tracking_uri = tracking_uri

    def _registered(self) -> tuple[object, object, int] | None:
        """(client, model version, catalog version) the registry records, or None."""
        if self.uri is None:
            return None
        from metarec.catalog.tracking import registry_catalog, resolve

        mlc, mv = resolve(self.uri, self.tracking_uri)
        found = registry_catalog(mv)
        if found is None or found[3] != self.model_key:  # the alias moved to another model
            return None
        return mlc, mv, found[0]

    def latest_version(self) -> int:
        """The newest version either place knows of (1: the export's own)."""
        local = self.store.latest_version() if self.store is not None else 1
        reg = self._registered()
        return max(local, reg[2] if reg else 1)

    def read(self, version: int | None = None) -> Catalog:
        """The version ``version`` (default: the latest), verified: from the store when it
        has it, else downloaded from the registry; version 1 from the export."""
        version = self.latest_version() if version is None else version
        if version == 1:
            return read_catalog(self.base)
        if self.store is not None and self.store.path(version).is_dir():
            return self.store.read(version)
        reg = self._registered()
        if reg is None or reg[2] != version:
            raise FileNotFoundError(f"catalog version {version} of model {self.model_key} is "
                                    "neither in the store nor recorded in the registry")
        from metarec.catalog.tracking import fetch_catalog

        with tempfile.TemporaryDirectory(prefix="metarec-catalog-") as tmp:
            folder = fetch_catalog(reg[0], reg[1], tmp)
            return read_catalog(folder, mmap=False)  # in memory: the download goes away
