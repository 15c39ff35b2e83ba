"""Ranking baselines for full-catalog evaluation (implicit or explicit tasks), behind
``predict(tasks) -> (N, Q) scores`` like every other method. Both are fitted on the training
tasks' interactions, support and query (as ``item_mean`` is): the positives (label > 0) of
implicit tasks (:func:`metarec.evaluation.catalog.is_implicit`), every rating of explicit ones.

- ``most_pop``: an item's number of training interactions, the same for every user;
- ``item_knn`` (Sarwar et al., WWW 2001; Deshpande & Karypis, TOIS 2004): with X the training
  user x item interaction matrix (1 per implicit positive, the rating for explicit data), the
  similarity of two items is the cosine of their columns of X; a query item scores the sum of
  its similarities to the task's support interactions (its positives for implicit tasks, every
  support rating for explicit ones), itself excluded. A task with an empty support falls back
  to popularity. The item x item similarity is never built: the scores are
  ``(U Xn^T) Xn[:, query]`` with Xn the column-normalised X and U the tasks' support
  indicators (sparse), so memory grows with users x tasks, not items^2.

Scores rank; they are not ratings (their mae is meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from metarec.data.arrays import TaskArrays
from metarec.evaluation.catalog import is_implicit

RANKING_BASELINES = ("most_pop", "item_knn")


def interactions(tasks: TaskArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training interactions of ``tasks``, support and query: (task row, item row, value)
    (R,) arrays; implicit: positives with value 1, explicit: every rating with its value."""
    rows, items, values = [], [], []
    for side in ("support", "query"):
        mask = getattr(tasks, f"{side}_mask").astype(bool)
        labels = getattr(tasks, f"{side}_ratings")
        keep = mask & (labels > 0) if is_implicit(tasks) else mask
        rows.append(np.nonzero(keep)[0])
        items.append(getattr(tasks, f"{side}_items")[keep])
        values.append(np.ones(int(keep.sum())) if is_implicit(tasks) else labels[keep])
    return (np.concatenate(rows).astype(np.int64), np.concatenate(items).astype(np.int64),
            np.concatenate(values).astype(np.float64))


def _check_items(items: np.ndarray, n_items: int) -> None:
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"interactions name item rows outside 0..{n_items - 1}")


@dataclass
class MostPopBaseline:
    """Scores every query item by its number of training interactions."""

    counts: np.ndarray  # (I,) per item row

    @classmethod
    def fit(cls, train_tasks: TaskArrays, n_items: int) -> "MostPopBaseline":
        _, items, _ = interactions(train_tasks)
        if items.size == 0:
            raise ValueError("most_pop baseline: the training tasks hold no interactions")
        _check_items(items, n_items)
        return cls(np.bincount(items, minlength=n_items).astype(np.float64))

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        return self.counts[tasks.query_items].astype(np.float32)


@dataclass
class ItemKNNBaseline:
    """Sum of cosine similarities (over training interactions) to the support interactions."""

    normalised: sparse.csc_matrix  # (users, I) X with unit-norm columns (zero columns stay 0)
    self_sim: np.ndarray  # (I,) cosine of an item with itself: 1, or 0 for an unseen item
    popularity: MostPopBaseline

    @classmethod
    def fit(cls, train_tasks: TaskArrays, n_items: int) -> "ItemKNNBaseline":
        rows, items, values = interactions(train_tasks)
        if items.size == 0:
            raise ValueError("item_knn baseline: the training tasks hold no interactions")
        _check_items(items, n_items)
        x = sparse.csr_matrix((values, (rows, items)), shape=(len(train_tasks), n_items))
        x.sum_duplicates()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel())
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        xn = (x @ sparse.diags(scale)).tocsc()
        return cls(xn, (norms > 0).astype(np.float64),
                   MostPopBaseline(np.bincount(items, minlength=n_items).astype(np.float64)))

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        n_items = self.normalised.shape[1]
        mask = tasks.support_mask.astype(bool)
        if is_implicit(tasks):
            mask &= tasks.support_ratings > 0
        _check_items(tasks.support_items[mask], n_items)
        _check_items(tasks.query_items, n_items)
        n = len(tasks)
        u = sparse.csr_matrix((np.ones(int(mask.sum())), (np.nonzero(mask)[0],
                                                          tasks.support_items[mask])),
                              shape=(n, n_items))
        u.sum_duplicates()
        u.data[:] = 1.0  # an item twice in a support counts once
        cols, inverse = np.unique(tasks.query_items, return_inverse=True)
        profile = (u @ self.normalised.T).toarray()  # (N, users)
        sims = profile @ self.normalised[:, cols].toarray()  # (N, |cols|)
        sims -= u[:, cols].toarray() * self.self_sim[cols]  # an item is not its own neighbour
        scores = np.take_along_axis(sims, inverse.reshape(tasks.query_items.shape), 1)
        empty = ~mask.any(1)
        if empty.any():
            scores[empty] = self.popularity.counts[tasks.query_items[empty]]
        return scores.astype(np.float32)
