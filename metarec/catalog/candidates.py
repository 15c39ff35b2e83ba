"""A candidate stage for large catalogs: a coarse partition scored with the adapted model.

An item's score under a user's state depends on the item only through its catalog row: the
item half of the first layer ``first`` (H0,), the offset and the head features. Items whose
rows are close get close scores (the decision MLP is Lipschitz), so the catalog's active rows
are partitioned by k-means (:func:`build_index`, numpy, trained on a sample) over
``[first, w * offset]`` (``w`` gives the offset as much weight as all of ``first``), each list
summarised by the mean row of its members. A request scores the ``L`` list means with the
user's adapted state (the same ``score.onnx``), then scores exactly the members of the
``probe`` best lists and returns their ``n`` best: about ``L + probe * N / L`` rows scored
instead of N. It is a heuristic (the best item of a list can beat its list's mean by a lot),
so its recall against the exact scan is measured (benchmarks/catalog_scale.py), not assumed.
The nearest-neighbour view: the lists are neighbourhoods in item-vector space, and the adapted
user's scores of their centres pick the neighbourhoods to search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from metarec.catalog.artifact import Catalog
from metarec.catalog.scoring import CatalogGraphs, TopK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateIndex:
    """Lists of active catalog rows: ``order`` (A,) rows grouped by list, list ``l`` being
    ``order[starts[l]:starts[l + 1]]``; ``means``: each list's mean catalog row (first,
    vectors, offset, head)."""

    order: np.ndarray
    starts: np.ndarray
    means: dict[str, np.ndarray]
    version: int

    @property
    def lists(self) -> int:
        return len(self.starts) - 1

    def candidates(self, graphs: CatalogGraphs, catalog: Catalog, state: Mapping[str, np.ndarray],
                   probe: int, n: int, exclude: np.ndarray | None = None) -> TopK:
        """The ``n`` best rows among the members of the ``probe`` lists whose means score
        best under ``state`` (``exclude`` rows left out)."""
        if catalog.version != self.version:
            raise ValueError(f"the index was built on catalog version {self.version}, not "
                             f"{catalog.version}")
        list_scores = graphs.score_arrays(self.means, state)  # (L,) in one ONNX Runtime call
        probe = min(probe, self.lists)
        best = np.argpartition(-list_scores, probe - 1)[:probe]
        rows = np.concatenate([self.order[self.starts[b]:self.starts[b + 1]] for b in best])
        if exclude is not None and len(exclude):
            rows = rows[~np.isin(rows, exclude)]
        top = graphs.top_k_of(catalog, state, rows, n)
        return TopK(top.rows, top.scores, self.lists + len(rows))


def _features(catalog: Catalog, rows: np.ndarray) -> np.ndarray:
    first = np.asarray(catalog.first[rows], np.float32)
    offset = np.asarray(catalog.offset[rows], np.float32)
    spread = float(np.sqrt(first.var(0).sum()))
    weight = spread / max(float(offset.std()), 1e-6)
    return np.concatenate([first, weight * offset[:, None]], 1)


def _assign(x: np.ndarray, centres: np.ndarray, block: int = 8192) -> np.ndarray:
    """Nearest centre of every row of ``x`` (squared Euclidean), in blocks."""
    c2 = (centres ** 2).sum(1)
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), block):
        d = c2[None, :] - 2.0 * x[s:s + block] @ centres.T  # |x|^2 is the same for every centre
        out[s:s + block] = d.argmin(1)
    return out


def build_index(catalog: Catalog, lists: int, *, iterations: int = 10, sample: int = 65536,
                seed: int = 0, vectors: bool = False) -> CandidateIndex:
    """k-means lists over the catalog's active rows (see the module docstring); ``vectors``:
    also the lists' mean item vectors (needed when the first layer adapts: gradient kinds)."""
    active = np.flatnonzero(catalog.active)
    if lists < 1 or lists > len(active):
        raise ValueError(f"lists must be in 1..{len(active)} (the active items), got {lists}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    x_all = _features(catalog, active)
    train = x_all[rng.choice(len(active), min(sample, len(active)), replace=False)]
    centres = train[rng.choice(len(train), lists, replace=False)].copy()
    for _ in range(iterations):
        label = _assign(train, centres)
        counts = np.bincount(label, minlength=lists)
        sums = np.zeros_like(centres)
        np.add.at(sums, label, train)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    _, label = np.unique(_assign(x_all, centres), return_inverse=True)  # no empty list
    lists = int(label.max()) + 1
    order = np.argsort(label, kind="stable")
    starts = np.searchsorted(label[order], np.arange(lists + 1))
    rows = active[order]
    counts = np.diff(starts).astype(np.float32)
    means = {}
    for name in ("first", "offset", "head", *(["vectors"] if vectors else [])):
        values = np.asarray(getattr(catalog, name)[rows], np.float32)
        sums = np.add.reduceat(values, starts[:-1], axis=0)
        means[name] = (sums / (counts[:, None] if values.ndim == 2 else counts)).astype(np.float32)
    log.info("candidate index: %d lists over %d items in %.1f s", lists, len(active),
             time.perf_counter() - start)
    return CandidateIndex(rows, starts, means, catalog.version)
