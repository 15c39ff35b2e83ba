"""A catalog version: the items a model can recommend, as arrays in a folder of its own.

One row per item, in the order items joined the catalog (a new version appends rows and never
reorders them)::

    ids.npy      (I,)     int64    canonical item ids (unique)
    vectors.npy  (I, Ei)  float32  the item tower's output (support items of the user graph)
    first.npy    (I, H0)  float32  the item half of the first decision layer (precomputed)
    offset.npy   (I,)     float32  the score offset (the item's shrunk mean deviation; 0 new)
    head.npy     (I, f)   float32  the ridge head's item features (f may be 0)
    retired.npy  (I,)     bool     never recommended again, still accepted as support
    titles.json  [I]      titles (null where unknown)
    manifest.json         version, parent, model key, counts, changes, lineage, and the
                          sha256 of every other file (``files``) and their ``content_hash``

A catalog belongs to one model (``model_key``: the digest of the export's item encoder and
user graph, :func:`model_key`): vectors of another model's item tower would be meaningless.
Reading a catalog checks every file against the manifest (:class:`IntegrityError` naming
the file), so a version is used exactly as it was written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metarec.io import file_sha256, write_json
from metarec.registry.integrity import IntegrityError

MANIFEST = "manifest.json"
ARRAYS = ("ids", "vectors", "first", "offset", "head", "retired")
TITLES = "titles.json"
FORMAT = 1


def model_key(export_dir: str | Path, files: Sequence[str]) -> str:
    """The identity of the model a catalog belongs to: sha256 over ``files``' digests."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(f"{name}\0{file_sha256(Path(export_dir) / name)}\n".encode())
    return digest.hexdigest()[:24]


def content_hash(files: Mapping[str, str]) -> str:
    """The digest of a catalog's content: sha256 over its data files' digests (sorted)."""
    lines = "".join(f"{k}\0{v}\n" for k, v in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


class IdIndex:
    """Canonical item id -> catalog row, as a mapping over sorted arrays (16 bytes per item;
    a dict of a million ints would take ~100 MB and a second to build)."""

    def __init__(self, ids: np.ndarray) -> None:
        self._order = np.argsort(ids, kind="stable")
        self._sorted = np.asarray(ids, np.int64)[self._order]

    def get(self, item: int, default: int | None = None) -> int | None:
        i = int(np.searchsorted(self._sorted, item))
        if i < len(self._sorted) and self._sorted[i] == item:
            return int(self._order[i])
        return default

    def __contains__(self, item: object) -> bool:
        return isinstance(item, (int, np.integer)) and self.get(int(item)) is not None

    def __getitem__(self, item: int) -> int:
        row = self.get(int(item))
        if row is None:
            raise KeyError(item)
        return row

    def __len__(self) -> int:
        return len(self._sorted)

    def __iter__(self):
        return iter(self._sorted.tolist())


@dataclass(frozen=True, eq=False)
class Catalog:
    """A catalog version in memory (see the module docstring for the arrays' shapes)."""

    ids: np.ndarray
    titles: list[str | None]
    vectors: np.ndarray
    first: np.ndarray
    offset: np.ndarray
    head: np.ndarray
    retired: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("vectors", "first", "offset", "head", "retired"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"catalog {name} has {getattr(self, name).shape[0]} rows for "
                                 f"{n} ids")
        if len(self.titles) != n:
            raise ValueError(f"catalog has {len(self.titles)} titles for {n} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 0))

    @property
    def model_key(self) -> str | None:
        return self.manifest.get("model_key")

    @property
    def content_hash(self) -> str | None:
        return self.manifest.get("content_hash")

    @cached_property
    def row_of(self) -> IdIndex:
        """Canonical item id -> row (``in``, ``[]``, ``get``)."""
        return IdIndex(self.ids)

    @cached_property
    def active(self) -> np.ndarray:
        """(I,) bool: rows that may be recommended (not retired)."""
        return ~np.asarray(self.retired, bool)

    def describe(self) -> dict[str, Any]:
        """What /health and the CLI say of it."""
        return {"version": self.version, "items": len(self), "active": int(self.active.sum()),
                "content_hash": self.content_hash, "model_key": self.model_key}

    def appended(self, ids: np.ndarray, titles: Sequence[str | None], rows: Mapping[str, np.ndarray]
                 ) -> "Catalog":
        """This catalog with new rows (``rows``: vectors, first, offset, head) at the end."""
        clash = sorted(set(ids[np.isin(ids, self.ids)].tolist()))
        if clash:
            raise ValueError(f"item id(s) {clash[:20]} are already in catalog version "
                             f"{self.version} (ids are never reused; retired ones included)")
        return replace(
            self, ids=np.concatenate([self.ids, ids.astype(np.int64)]),
            titles=[*self.titles, *titles],
            retired=np.concatenate([self.retired, np.zeros(len(ids), bool)]),
            manifest={},
            **{k: np.concatenate([np.asarray(getattr(self, k)), rows[k].astype(np.float32)])
               for k in ("vectors", "first", "offset", "head")})

    def with_retired(self, ids: Sequence[int]) -> "Catalog":
        """This catalog with ``ids`` retired (unknown or already retired ids are errors)."""
        unknown = sorted(i for i in ids if i not in self.row_of)
        if unknown:
            raise ValueError(f"item id(s) {unknown[:20]} are not in catalog version "
                             f"{self.version}")
        rows = [self.row_of[i] for i in ids]
        again = sorted(int(self.ids[r]) for r in rows if self.retired[r])
        if again:
            raise ValueError(f"item id(s) {again[:20]} are already retired")
        retired = np.array(self.retired, bool, copy=True)
        retired[rows] = True
        return replace(self, retired=retired, manifest={})


def write_catalog(folder: str | Path, catalog: Catalog, manifest: Mapping[str, Any]) -> dict:
    """Write ``catalog`` into the (new, empty) ``folder`` with ``manifest`` completed by the
    files' digests, the content hash and the counts; returns the manifest written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder}: a catalog is only written into an empty folder")
    for name in ARRAYS:
        dtype = {"ids": np.int64, "retired": np.bool_}.get(name, np.float32)
        np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(catalog, name), dtype=dtype),
                allow_pickle=False)
    (folder / TITLES).write_text(json.dumps(list(catalog.titles), ensure_ascii=False),
                                 encoding="utf-8")
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir())}
    full = {**manifest, "format": FORMAT, "items": len(catalog),
            "active": int(catalog.active.sum()), "files": files,
            "content_hash": content_hash(files),
            "widths": {"vectors": int(catalog.vectors.shape[1]),
                       "first": int(catalog.first.shape[1]), "head": int(catalog.head.shape[1])}}
    write_json(folder / MANIFEST, full)
    return full


def read_catalog(folder: str | Path, *, mmap: bool = True) -> Catalog:
    """The catalog in ``folder``, every file checked against its manifest.

    ``mmap``: the item vectors are memory-mapped (only the support rows a request rates are
    read; the scoring pass reads the precomputed first layer instead).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}: not a catalog")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = manifest.get("files") or {}
    found = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    extra = sorted(found - set(files))
    missing = sorted(set(files) - found)
    changed = sorted(n for n in set(files) & found if file_sha256(folder / n) != files[n])
    if extra or missing or changed or content_hash(files) != manifest.get("content_hash"):
        raise IntegrityError(f"catalog {folder}: its files differ from its manifest (changed "
                             f"{changed}, missing {missing}, unlisted {extra}); refusing it")
    arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False,
                         mmap_mode="r" if mmap and n == "vectors" else None) for n in ARRAYS}
    titles = json.loads((folder / TITLES).read_text(encoding="utf-8"))
    return Catalog(**arrays, titles=titles, manifest=manifest)
