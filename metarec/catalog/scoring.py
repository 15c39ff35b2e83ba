"""A user's adaptation and the scoring of a catalog (ONNX Runtime and numpy; torch-free).

:class:`CatalogGraphs` holds the export's ``user.onnx`` and ``score.onnx`` sessions
(:mod:`metarec.export.user_graph`): :meth:`~CatalogGraphs.adapt` turns a user's support rows
(catalog rows) and ratings into the adapted state, :meth:`~CatalogGraphs.score` scores any
candidate rows under it (``score.onnx``), and :meth:`~CatalogGraphs.top_k` scans the whole
catalog in chunks of ``chunk`` rows with a running partial sort (``np.argpartition``), so a
request holds one chunk's scores at a time whatever the catalog's size. The item half of the
first decision layer is precomputed in the catalog (``first``), so scoring an item costs the
hidden layers after the first one and the head: about ``H0 * H1 + H`` multiply-adds (64-64-1:
~4.2k). The scan computes what ``score.onnx`` computes with numpy on reused buffers (BLAS
limited to ``threads`` during the scan): one ONNX Runtime call per chunk cost 1.3-2x more on
the measuring machine (benchmarks/RESULTS.md), and a test holds both equal.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from metarec.catalog.artifact import Catalog
from metarec.export.runtime import CPU, session

DEFAULT_CHUNK = 4096


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
        self.middle = sorted({int(n.split("_")[1]) for n in self.state_names
                              if n.startswith("layer_")})
        self.threads = threads
        self._blas = None  # a threadpoolctl controller, made on the first scan

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
        return self.score_arrays({"first": catalog.first, "vectors": catalog.vectors,
                                  "offset": catalog.offset, "head": catalog.head}, state, rows)

    def score_arrays(self, arrays: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray],
                     rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Scores of ``rows`` of catalog-like ``arrays`` (``first``, ``vectors``, ``offset``,
        ``head``; e.g. a candidate index's centroids) under ``state`` -> (C,)."""
        feed = {n: (np.asarray(arrays[n.removeprefix("candidate_").replace("vecs", "vectors")]
                               [rows], np.float32) if n.startswith("candidate_") else state[n])
                for n in self.score_inputs}
        return self.scorer.run(["scores"], feed)[0]

    def scan_scores(self, catalog: Catalog, state: Mapping[str, np.ndarray],
                    rows: slice | np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
        """``score.onnx`` in numpy for the catalog ``rows`` (a slice or an index array) ->
        (C,) scores; ``buf`` (at least (C, H0)): working memory reused across chunks.

        Each ReLU of ``y + c`` (``c`` the user's constant: the user half of the first layer,
        then each layer's bias) is taken as ``max(y, -c) + c`` and the ``+ c`` carried into
        the next layer's bias (``c @ W + b``), computed once per request: one pass over the
        chunk per layer instead of two.
        """
        first = catalog.first[rows]
        n = len(first)
        z = np.empty((n, len(state["user_first"])), np.float32) if buf is None else buf[:n]
        carry = state["user_first"]  # (H0,) the constant added to the first layer's rows
        if "first_item" in state:  # the first layer adapted (gradient kind): per user
            np.matmul(np.asarray(catalog.vectors[rows], np.float32), state["first_item"], out=z)
            np.maximum(z, -carry, out=z)
        else:
            np.maximum(first, -carry, out=z)
        for i in self.middle:  # relu(x) = max(y, -c) + c, the "+ c" carried forward
            wt = state[f"layer_{i}_wt"]
            z = z @ wt
            carry = carry @ wt + state[f"layer_{i}_b"]
            np.maximum(z, -carry, out=z)
        head, f = state["head"], self.head_width
        hidden = len(head) - f - 1
        scores = z @ head[:hidden]
        if f:
            scores += np.asarray(catalog.head[rows], np.float32) @ head[hidden:hidden + f]
        scores += np.float32(carry @ head[:hidden] + head[-1])
        scores += catalog.offset[rows]
        return scores

    def top_k(self, catalog: Catalog, state: Mapping[str, np.ndarray], k: int,
              exclude: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK) -> TopK:
        """The ``k`` best active rows of the whole catalog, leaving out ``exclude`` rows."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n = len(catalog)
        excluded = np.unique(np.asarray(exclude if exclude is not None else [], np.int64))
        retired = not bool(catalog.active.all())
        best_rows, best = np.zeros(0, np.int64), np.zeros(0, np.float32)
        buf = np.empty((min(chunk, n), len(state["user_first"])), np.float32)
        with self._blas_limit():
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                s = self.scan_scores(catalog, state, slice(start, stop), buf)
                if not np.all(np.isfinite(s)):
                    raise RuntimeError("the model produced non-finite scores")
                if retired:
                    s[~catalog.active[start:stop]] = -np.inf
                lo, hi = np.searchsorted(excluded, [start, stop])
                s[excluded[lo:hi] - start] = -np.inf
                best_rows, best = _merge(best_rows, best, np.arange(start, stop), s, k)
        return _finish(best_rows, best, n)

    def _blas_limit(self) -> Any:
        """BLAS threads limited to ``threads`` for the length of a scan (0: unchanged)."""
        if self.threads <= 0:
            return contextlib.nullcontext()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()  # inspects the loaded libraries once
        return self._blas.limit(limits=self.threads, user_api="blas")

    def top_k_of(self, catalog: Catalog, state: Mapping[str, np.ndarray], rows: np.ndarray,
                 k: int) -> TopK:
        """The ``k`` best of the given candidate ``rows`` (a candidate stage's output)."""
        rows = np.asarray(rows, np.int64)
        with self._blas_limit():
            s = self.scan_scores(catalog, state, rows) if len(rows) else np.zeros(0, np.float32)
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
