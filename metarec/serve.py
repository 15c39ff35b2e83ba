"""Serving: the exported graphs in ONNX Runtime behind a small API (no PyTorch at request time).

:class:`Recommender` loads an export directory (see :mod:`metarec.export`) or an MLflow URI
(``models:/metarec@champion``), encodes a request (user attributes through the saved encoders,
item ids to rows), adapts to the ratings and returns the top-k items. An export with a catalog
(format 3) is served through it: ``user.onnx`` adapts, ``score.onnx`` scans the latest catalog
version in chunks (:mod:`metarec.catalog.scoring`), and :meth:`Recommender.refreshed` picks
up a newer catalog version without reloading the model. Older exports run ``model.onnx``, the
single graph with every item inside. The HTTP API around it (limits, workers, reload) is
:mod:`metarec.serving`.
"""

from __future__ import annotations

import copy
import logging
import math
import zlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from metarec.export.runtime import METADATA_FILE, choose_providers, session

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve; the message names the offending values."""


@dataclass(frozen=True)
class Recommendation:
    item_id: int
    title: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "score": self.score}


def adaptation_entry(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The export's adaptation (``Adaptation.to_dict()``); format-1 exports stored a string
    and top-level ``learner``/``inner_steps``/``inner_lr``, read into the same shape."""
    entry = meta.get("adaptation")
    if isinstance(entry, dict):
        return entry
    return {"kind": "ridge" if entry == "ridge" else "gradient", "learner": meta["learner"],
            "steps": 0 if entry == "ridge" else meta["inner_steps"],
            "lr": meta.get("inner_lr", 0.0)}


def describe(adaptation: Mapping[str, Any]) -> str:
    """A short phrase for logs: "closed-form ridge", "2 inner steps", "no adaptation"."""
    kind = adaptation["kind"]
    if kind == "ridge":
        return "closed-form ridge"
    return f"{adaptation['steps']} inner steps" if kind == "gradient" else "no adaptation"


def resolve_model_dir(uri: str, tracking_uri: str | None = None,
                      dest: str | Path | None = None) -> Path:
    """A local export directory for ``uri``: a path as is, an MLflow URI downloaded.

    A registered version (``models:/name@alias``, ``models:/name/3``) is downloaded and its
    files checked against the sha256 recorded at registration (a changed file is an
    ``IntegrityError``: :func:`metarec.registry.fetch_verified`). Other MLflow URIs
    (``runs:/id/path``...) are fetched with ``mlflow.artifacts.download_artifacts``,
    unverified; the directory holding ``metadata.json`` is used. Downloads go to ``dest``
    (default: a new temporary directory the caller owns; :func:`local_model_dir` removes it).
    """
    local = Path(uri)
    if not is_remote(uri):
        if not (local / METADATA_FILE).exists():
            raise FileNotFoundError(f"{uri}: no {METADATA_FILE}: not an exported model directory")
        return local
    if uri.startswith("models:/"):
        from metarec.registry.integrity import fetch_verified

        return fetch_verified(uri, tracking_uri, dest=dest)
    import mlflow

    if tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking_uri)
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="metarec-model-"))
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    found = sorted(root.rglob(METADATA_FILE), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"{uri}: the downloaded artifacts hold no {METADATA_FILE}")
    return found[0].parent


def catalog_options(catalog: Any) -> dict[str, int]:
    """The :class:`Recommender` options of a ``catalog`` section (metarec.config.CatalogConfig)."""
    return {"chunk": catalog.chunk, "candidate_lists": catalog.candidate_lists,
            "candidate_probe": catalog.candidate_probe}


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is an MLflow URI (downloaded) rather than a local directory."""
    return "://" in uri or ":/" in uri


@contextmanager
def local_model_dir(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """:func:`resolve_model_dir` for the length of a block: a download is removed after it
    (a loaded :class:`Recommender` holds everything it needs in memory)."""
    if not is_remote(uri):
        yield resolve_model_dir(uri, tracking_uri)
        return
    with tempfile.TemporaryDirectory(prefix="metarec-model-") as tmp:
        yield resolve_model_dir(uri, tracking_uri, dest=tmp)


class Recommender:
    """Top-k recommendations for a new user from a handful of ratings, in ONNX Runtime.

    Args:
        model_dir: an export directory (see :mod:`metarec.export`).
        threads: intra-op threads of the ONNX Runtime sessions (0: its default).
        max_ratings: most ratings accepted in one request.
        catalog_dir: the catalog store (``catalog.dir``; None: the export's own catalog and
            the registry's only); ``tracking_uri``: where a ``models:/`` source's catalogs
            are recorded; ``chunk``: items scored per chunk of a catalog scan;
            ``candidate_lists`` > 0: a candidate stage of that many lists, probing
            ``candidate_probe`` of them (:mod:`metarec.catalog.candidates`), instead of the
            exact scan.
    """

    def __init__(self, model_dir: str | Path, *, threads: int = 1, max_ratings: int = 200,
                 source: str | None = None, catalog_dir: str | Path | None = None,
                 tracking_uri: str | None = None, chunk: int = 4096,
                 candidate_lists: int = 0, candidate_probe: int = 16) -> None:
        import json

        from metarec.features.encoders import FeatureEncoders

        self.model_dir = Path(model_dir)
        self.source = source or str(model_dir)
        self.meta = json.loads((self.model_dir / METADATA_FILE).read_text(encoding="utf-8"))
        self.max_ratings = max_ratings
        self.user_fields = tuple(self.meta["user_fields"])
        encs = self.meta.get("user_encoders")
        self.encoders = None if encs is None else \
            FeatureEncoders.from_dict({"user": encs, "item": [], "item_multi": []}).user
        self.rating_min, self.rating_max = self.meta["rating_range"]
        # Implicit models: a request's values are interactions (labels, counts), turned into
        # positives and sampled negatives like the training tasks (:meth:`support_set`).
        self.feedback = self.meta.get("feedback") or {"mode": "explicit"}
        self.adaptation = adaptation_entry(self.meta)
        self.providers = choose_providers()
        self.chunk = chunk
        self.candidate_lists, self.candidate_probe = candidate_lists, candidate_probe
        self.index = None
        entry = self.meta.get("catalog")
        if entry:  # the catalog path: user graph + chunked scoring of the latest catalog
            from metarec.catalog.scoring import CatalogGraphs
            from metarec.catalog.source import CatalogSource

            self.graphs = CatalogGraphs(self.model_dir, entry, threads=threads,
                                        providers=self.providers)
            self.catalogs = CatalogSource(entry["model_key"], self.model_dir / entry["dir"],
                                          catalog_dir, self.source, tracking_uri)
            self.session = None
            self._use(self.catalogs.read())
        else:  # an export before catalogs: every item inside model.onnx
            self.graphs = self.catalogs = self.catalog = None
            self.item_ids = np.asarray(self.meta["item_ids"], dtype=np.int64)
            self.row_of = {int(i): r for r, i in enumerate(self.item_ids)}
            self.titles = self.meta.get("titles")
            self.session = session(self.model_dir / self.meta["model_file"], threads=threads,
                                   providers=self.providers)
            self._all_rows = np.arange(len(self.item_ids), dtype=np.int64)
        log.info("serving %s: %d items, learner %s, %s, providers %s", self.source,
                 len(self.item_ids), self.adaptation["learner"], describe(self.adaptation),
                 self.providers)

    def _use(self, catalog: Any) -> None:
        self.graphs.check(catalog)
        if self.candidate_lists > 0:
            from metarec.catalog.candidates import build_index

            active = int(catalog.active.sum())
            vectors = "candidate_vecs" in self.graphs.score_inputs
            self.index = build_index(catalog, min(self.candidate_lists, active),
                                     vectors=vectors) if active else None
        self.catalog = catalog
        self.item_ids = catalog.ids
        self.row_of = catalog.row_of
        self.titles = catalog.titles

    def with_catalog(self, catalog: Any) -> "Recommender":
        """This model serving another catalog version (sessions shared; ``self`` unchanged,
        so requests in flight finish on the catalog they started with)."""
        other = copy.copy(self)
        other._use(catalog)
        return other

    def refreshed(self) -> "Recommender | None":
        """This model on the latest catalog version when a newer one exists, else None."""
        if self.catalogs is None:
            return None
        latest = self.catalogs.latest_version()
        if latest <= self.catalog.version:
            return None
        new = self.with_catalog(self.catalogs.read(latest))
        log.info("%s: catalog version %d -> %d (%d items)", self.source, self.catalog.version,
                 latest, len(new.catalog))
        return new

    @classmethod
    def load(cls, uri: str, *, tracking_uri: str | None = None, threads: int = 1,
             max_ratings: int = 200, catalog_dir: str | Path | None = None,
             **catalog: int) -> "Recommender":
        """From an export directory or an MLflow URI (``models:/metarec@champion``); a
        download is removed once the model is in memory (no copy left per load).
        ``catalog``: ``chunk``, ``candidate_lists``, ``candidate_probe`` (see the class)."""
        with local_model_dir(uri, tracking_uri) as model_dir:
            return cls(model_dir, threads=threads, max_ratings=max_ratings, source=uri,
                       catalog_dir=catalog_dir, tracking_uri=tracking_uri, **catalog)

    # ------------------------------------------------------------------ encoding
    def encode_user(self, user: Mapping[str, Any] | None) -> np.ndarray:
        """User attributes -> (Fu,) int64 indices; absent fields are "unknown" (0)."""
        user = dict(user or {})
        unknown = sorted(set(user) - set(self.user_fields))
        if unknown:
            raise RequestError(f"unknown user feature(s) {unknown}; this model knows "
                               f"{list(self.user_fields)}")
        if self.encoders is None:
            if user:
                raise RequestError("this model was exported without user encoders; "
                                   "send no user features")
            return np.zeros(len(self.user_fields), np.int64)
        out = np.zeros(len(self.user_fields), np.int64)
        for f, enc in enumerate(self.encoders):
            value = user.get(enc.column)
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise RequestError(f"user feature {enc.column!r} must be a string or a number, "
                                   f"got {value!r}")
            try:
                out[f] = int(enc.transform([value])[0])
            except ValueError as exc:
                raise RequestError(f"user feature {enc.column!r}: {exc}") from None
        return out

    def encode_ratings(self, ratings: Mapping[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
        """{item_id: rating} -> ((S,) item rows, (S,) float32 ratings), checked."""
        if len(ratings) > self.max_ratings:
            raise RequestError(f"{len(ratings)} ratings given; at most {self.max_ratings} "
                               f"are accepted")
        bad_ids, unknown, bad_values, dupes, rows, values = [], [], [], [], [], []
        seen: set[int] = set()
        for key, value in ratings.items():
            try:
                item = int(str(key).strip())
            except ValueError:
                bad_ids.append(key)
                continue
            if item not in self.row_of:
                unknown.append(item)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not self.rating_min <= value <= self.rating_max:
                bad_values.append(f"{key}: {value!r}")
                continue
            if self.row_of[item] in seen:
                dupes.append(item)
                continue
            seen.add(self.row_of[item])
            rows.append(self.row_of[item])
            values.append(float(value))
        if bad_ids:
            raise RequestError(f"item ids must be integers, got {bad_ids[:10]}")
        if unknown:
            raise RequestError(f"unknown item id(s) {sorted(unknown)[:20]}"
                               f"{' ...' if len(unknown) > 20 else ''}")
        if dupes:
            raise RequestError(f"item id(s) rated more than once: {sorted(set(dupes))[:10]}")
        if bad_values:
            raise RequestError(f"ratings must be numbers in [{self.rating_min}, "
                               f"{self.rating_max}]: {bad_values[:10]}")
        return np.asarray(rows, np.int64), np.asarray(values, np.float32)

    # ------------------------------------------------------------------ scoring
    def support_set(self, rows: np.ndarray, values: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's support set for a request's (S,) item rows and values: (rows, ratings,
        mask). Explicit models: as given, mask 1. Implicit models
        (:mod:`metarec.data.implicit`): the values >= the rule's threshold are positives
        (label 1, mask = their confidence weight), plus ``negatives`` per positive drawn
        uniformly from the other items (label 0, mask 1), seeded by the request's items so the
        same request gets the same recommendations."""
        if self.feedback.get("mode") != "implicit":
            return rows, values, np.ones(len(rows), np.float32)
        from metarec.config import ImplicitRule
        from metarec.data.implicit import confidence, sample_negatives

        rule = ImplicitRule(**self.feedback["rule"])
        keep = values >= rule.threshold
        pos, weights = rows[keep], confidence(values[keep], rule)
        pool = self._all_rows if self.catalog is None else np.arange(len(self.item_ids))
        seed = zlib.crc32(np.sort(rows).astype(np.int64).tobytes())
        negs = sample_negatives(np.random.default_rng(seed), pool, None, rows,
                                min(rule.negatives * len(pos), max(len(pool) - len(rows), 0)))
        return (np.concatenate([pos, negs]).astype(np.int64),
                np.concatenate([np.ones(len(pos)), np.zeros(len(negs))]).astype(np.float32),
                np.concatenate([weights, np.ones(len(negs))]).astype(np.float32))

    def scores(self, user_cat: np.ndarray, rows: np.ndarray, ratings: np.ndarray,
               candidates: np.ndarray) -> np.ndarray:
        """Adapt and score: (Fu,), (S,), (S,), (C,) -> (C,) scores (rows of the catalog, or of
        ``model.onnx`` for an export before catalogs)."""
        rows, ratings, mask = self.support_set(rows, ratings)
        if self.catalog is not None:
            state = self.graphs.adapt(self.catalog, user_cat, rows, ratings, mask)
            return self.graphs.score(self.catalog, state, np.asarray(candidates, np.int64))
        feed = {"user_cat": user_cat, "support_items": rows, "support_ratings": ratings,
                "support_mask": mask, "candidate_items": candidates}
        return self.session.run(["scores"], feed)[0]

    def recommend(self, user: Mapping[str, Any] | None, ratings: Mapping[Any, Any], k: int = 10,
                  exclude_seen: bool = True) -> list[Recommendation]:
        """The ``k`` best-scored items after adapting to ``ratings`` ({item_id: rating}).

        Already rated items are left out unless ``exclude_seen`` is false. Raises
        :class:`RequestError` for unknown items or user features, bad ratings or k.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError(f"k must be a positive integer, got {k!r}")
        user_cat = self.encode_user(user)
        rows, values = self.encode_ratings(ratings)
        if self.catalog is not None:
            s_rows, s_values, s_mask = self.support_set(rows, values)
            state = self.graphs.adapt(self.catalog, user_cat, s_rows, s_values, s_mask)
            exclude = rows if exclude_seen else None
            top = (self.index.candidates(self.graphs, self.catalog, state, self.candidate_probe,
                                         k, exclude) if self.index is not None
                   else self.graphs.top_k(self.catalog, state, k, exclude, self.chunk))
            return [Recommendation(int(self.item_ids[r]), self.titles[r], float(sc))
                    for r, sc in zip(top.rows, top.scores)]
        cands = self._all_rows
        if exclude_seen and len(rows):
            cands = np.setdiff1d(self._all_rows, rows, assume_unique=False)
        if len(cands) == 0:
            return []
        scores = self.scores(user_cat, rows, values, cands)
        if not np.all(np.isfinite(scores)):
            raise RuntimeError("the model produced non-finite scores")
        k = min(k, len(cands))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((cands[top], -scores[top]))]  # by score, ties by row: stable output
        return [Recommendation(int(self.item_ids[cands[i]]),
                               None if self.titles is None else self.titles[cands[i]],
                               float(scores[i])) for i in top]

    def info(self) -> dict[str, Any]:
        return {"model": self.source, "items": len(self.item_ids),
                "user_fields": list(self.user_fields), "adaptation": self.adaptation,
                "learner": self.adaptation["learner"],
                "providers": (self.session or self.graphs.user).get_providers(),
                "catalog": None if self.catalog is None else self.catalog.describe(),
                "extra": self.meta.get("extra", {})}
