"""A user's adaptation and the scoring of a catalog, in ONNX Runtime (torch-free).

:class:`CatalogGraphs` holds the export's ``user.onnx`` and ``score.onnx`` sessions
(:mod:`metarec.export.user_graph`): :meth:`~CatalogGraphs.adapt` turns a user's support rows
(catalog rows) and ratings into the adapted state, :meth:`~CatalogGraphs.score` scores any
candidate rows under it, and :meth:`~CatalogGraphs.top_k` scans the whole catalog in chunks of
``chunk`` rows with a running partial sort (``np.argpartition``), so a request holds one
chunk's scores at a time whatever the catalog's size. The item half of the first decision
layer is precomputed in the catalog (``first``), so scoring an item costs the hidden layers
after the first one and the head: about ``H0 * H1 + H`` multiply-adds (64-64-1: ~4.2k).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metarec.catalog.artifact import Catalog
from metarec.export.runtime import CPU, session

DEFAULT_CHUNK = 16384


@dataclass(frozen=True)
class TopK:
    """The best rows of a scan, best first (ties by row), and their scores."""

    rows: np.ndarray
    scores: np.ndarray
    scored: int  # how many rows were scored exactly


class CatalogGraphs:
    """The user and score graphs of one export (``metadata["catalog"]`` names them)."""

    def __init__(self, export_dir: str | Path, entry: Mapping[str, Any], *, threads: int = 1,
                 providers: Sequence[str] = CPU) -> None:
        export_dir = Path(export_dir)
        self.entry = dict(entry)
        self.user = session(export_dir / entry["user_graph"], threads=threads, providers=providers)
        self.scorer = session(export_dir / entry["score_graph"], threads=threads,
                              providers=providers)
        self.state_names = list(entry["state"])
        self.score_inputs = list(entry["score_inputs"])
        self.head_width = int(entry["head_width"])
        self.model_key = entry["model_key"]

    def check(self, catalog: Catalog) -> None:
        """Refuse a catalog of another model, or of other widths."""
        if catalog.model_key != self.model_key:
            raise ValueError(f"catalog version {catalog.version} belongs to model "
                             f"{catalog.model_key}, not to this export ({self.model_key})")
        widths = (catalog.vectors.shape[1], catalog.first.shape[1], catalog.head.shape[1])
        want = (self.entry["item_width"], self.entry["first_width"], self.head_width)
        if widths != tuple(want):
            raise ValueError(f"catalog widths {widths} differ from the export's {tuple(want)}")

    def adapt(self, catalog: Catalog, user_cat: np.ndarray, rows: np.ndarray,
              ratings: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The adapted state of one user: (Fu,) user fields, (S,) support rows of ``catalog``
        and their ratings (``mask`` (S,): 1 real, 0 padding; default all real)."""
        rows = np.asarray(rows, np.int64)
        feed = {"user_cat": np.asarray(user_cat, np.int64),
                "support_vecs": np.asarray(catalog.vectors[rows], np.float32),
                "support_offset": np.asarray(catalog.offset[rows], np.float32),
                "support_ratings": np.asarray(ratings, np.float32),
                "support_mask": (np.ones(len(rows), np.float32) if mask is None
                                 else np.asarray(mask, np.float32))}
        if self.head_width:
            feed["support_head"] = np.asarray(catalog.head[rows], np.float32)
        return dict(zip(self.state_names, self.user.run(self.state_names, feed)))

    def score(self, catalog: Catalog, state: Mapping[str, np.ndarray],
              rows: np.ndarray | slice) -> np.ndarray:
        """Scores of the catalog ``rows`` (an index array or a slice) under ``state`` -> (C,)."""
        source = {"candidate_first": catalog.first, "candidate_vecs": catalog.vectors,
                  "candidate_offset": catalog.offset, "candidate_head": catalog.head}
        feed = {n: np.asarray(source[n][rows], np.float32) if n in source else state[n]
                for n in self.score_inputs}
        return self.scorer.run(["scores"], feed)[0]

    def top_k(self, catalog: Catalog, state: Mapping[str, np.ndarray], k: int,
              exclude: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK) -> TopK:
        """The ``k`` best active rows of the whole catalog, leaving out ``exclude`` rows."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n = len(catalog)
        excluded = np.unique(np.asarray(exclude if exclude is not None else [], np.int64))
        retired = not bool(catalog.active.all())
        best_rows, best = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            s = self.score(catalog, state, slice(start, stop))
            if not np.all(np.isfinite(s)):
                raise RuntimeError("the model produced non-finite scores")
            if retired:
                s[~catalog.active[start:stop]] = -np.inf
            lo, hi = np.searchsorted(excluded, [start, stop])
            s[excluded[lo:hi] - start] = -np.inf
            best_rows, best = _merge(best_rows, best, np.arange(start, stop), s, k)
        return _finish(best_rows, best, n)

    def top_k_of(self, catalog: Catalog, state: Mapping[str, np.ndarray], rows: np.ndarray,
                 k: int) -> TopK:
        """The ``k`` best of the given candidate ``rows`` (a candidate stage's output)."""
        rows = np.asarray(rows, np.int64)
        s = self.score(catalog, state, rows) if len(rows) else np.zeros(0, np.float32)
        best_rows, best = _merge(np.zeros(0, np.int64), np.zeros(0, np.float32), rows, s, k)
        return _finish(best_rows, best, len(rows))


def _merge(rows_a: np.ndarray, scores_a: np.ndarray, rows_b: np.ndarray, scores_b: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of the union of two (rows, scores) sets (unordered)."""
    if len(scores_b) > k:  # partial sort of the new chunk first: the merge stays O(k)
        part = np.argpartition(-scores_b, k - 1)[:k]
        rows_b, scores_b = rows_b[part], scores_b[part]
    rows = np.concatenate([rows_a, rows_b])
    scores = np.concatenate([scores_a, scores_b])
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        rows, scores = rows[part], scores[part]
    return rows, scores


def _finish(rows: np.ndarray, scores: np.ndarray, scored: int) -> TopK:
    keep = np.isfinite(scores)  # excluded and retired rows never come back
    rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))  # by score, ties by row: a stable answer
    return TopK(rows[order], scores[order], scored)
