"""Full-catalog ranking metrics per task (pure numpy, hand-checkable), and their scoring for any
method through its ``predict(tasks) -> (N, Q)`` protocol, chunk by chunk.

For each task (user), after adapting to its support set, every catalog item the user did not
interact with in support is ranked by the method's score:

- excluded (never ranked): the support slots with mask true; for implicit tasks
  (``tasks.support_weights`` is not None) only the positives (label > 0), so a sampled negative
  of the support stays a candidate;
- relevant: the query slots with mask true and label > 0 (implicit) or rating >=
  ``relevance_threshold`` (explicit); an item listed twice counts once, an excluded item is not
  relevant (it is not ranked);
- candidates: every other item row 0..I-1 (the query's non-relevant items included).

Per task, with rank 1 the best and R the relevant items: ``full_recall_at_<k>`` = hits@k / |R|,
``full_hr_at_<k>`` = 1 when any relevant item is in the top k, ``full_ndcg_at_<k>`` = binary-gain
DCG@k (discount 1/log2(1 + rank)) over the ideal DCG of min(k, |R|) relevant items on top,
``full_mrr`` = 1 / the rank of the best-ranked relevant item (no cut-off). A task with no
relevant item has no value (NaN) and is left out of means, as within-query nDCG does.

Ties: the catalog holds many equal scores (most popular, an unadapted prior), so the order of
equal scores is a seeded pseudo-random key per (task position, item row), a splitmix64 hash of
(seed, task, item): deterministic, the same whatever the chunking, and unrelated to the item's
row (ties broken by row would favour low ids). Equal keys (a 2^-64 chance) fall back to the row.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from metarec.data.arrays import TaskArrays
from metarec.evaluation.metrics import TaskScores

FULL_FAMILIES = ("recall", "hr", "ndcg", "mrr")
FULL_MRR = "full_mrr"
_FULL = re.compile(r"^full_(recall|hr|ndcg)_at_(\d+)$")


def is_full_catalog(name: str) -> bool:
    """True for a full-catalog metric name (full_recall_at_10, full_mrr, ...)."""
    return name == FULL_MRR or _FULL.match(name) is not None


def full_metric_names(families: tuple[str, ...], ks: tuple[int, ...]) -> list[str]:
    """Names of ``evaluation.full_catalog.metrics`` x ``ks``: recall, mrr, (10,) ->
    full_recall_at_10, full_mrr (mrr has no cut-off)."""
    names: list[str] = []
    for fam in families:
        if fam == "mrr":
            names.append(FULL_MRR)
        elif fam in FULL_FAMILIES:
            if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
                raise ValueError(f"evaluation.full_catalog.ks must be positive integers, got {ks}")
            names.extend(f"full_{fam}_at_{int(k)}" for k in ks)
        else:
            raise ValueError(f"unknown full-catalog metric {fam!r} in "
                             f"evaluation.full_catalog.metrics; known: {list(FULL_FAMILIES)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- tie keys and ranks

_M64 = [np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _M64[0]
        z = (z ^ (z >> np.uint64(30))) * _M64[1]
        z = (z ^ (z >> np.uint64(27))) * _M64[2]
        return z ^ (z >> np.uint64(31))


def tie_keys(seed: int, tasks: np.ndarray, items: np.ndarray) -> np.ndarray:
    """uint64 tie-break keys of (task position, item row) pairs, broadcast like ``tasks`` (T, 1)
    against ``items`` (T, B) or (1, B): a larger key ranks first among equal scores."""
    base = _mix(np.asarray(tasks, np.uint64) ^ _mix(np.full(1, seed % 2**64, np.uint64)))
    return _mix(base ^ np.asarray(items, np.int64).astype(np.uint64))


def count_above(ref: tuple[np.ndarray, np.ndarray, np.ndarray],
                cand: tuple[np.ndarray, np.ndarray, np.ndarray],
                valid: np.ndarray) -> np.ndarray:
    """(T, R) number of valid candidates ranked above each reference entry, row by row.

    ``ref`` = (scores, keys, items) each (T, R); ``cand`` likewise (T, B) with ``valid`` (T, B)
    bool. Candidate c ranks above r when (score, key, item) of c is larger (lexicographic): one
    sort of each row's candidates and references together (O((B + R) log) per row).
    """
    t, r = ref[0].shape
    rows = np.repeat(np.arange(t), r + cand[0].shape[1]).reshape(t, -1)
    score, key, item = (np.concatenate([c, f], 1) for c, f in zip(cand, ref))
    is_cand = np.concatenate([valid, np.zeros((t, r), bool)], 1)
    order = np.lexsort((item.ravel(), key.ravel(), np.asarray(score, np.float64).ravel(),
                        rows.ravel()))
    # ascending within each row: the valid candidates above a position are the row's total
    # minus those up to it.
    sorted_cand = is_cand.ravel()[order].reshape(t, -1)
    upto = np.cumsum(sorted_cand, 1)
    above_sorted = sorted_cand.sum(1, keepdims=True) - upto
    above = np.empty(t * (r + cand[0].shape[1]), np.int64)
    above[order] = above_sorted.ravel()
    return above.reshape(t, -1)[:, cand[0].shape[1]:]


def metrics_from_ranks(ranks: np.ndarray, relevant: np.ndarray,
                       names: list[str]) -> dict[str, np.ndarray]:
    """Per-task full-catalog metrics ``names`` of (N, R) 1-based ranks of the relevant entries
    (``relevant`` (N, R) bool marks the real ones): ``{name: (N,) float64}``, NaN without any."""
    rel = np.asarray(relevant, bool)
    ranks = np.where(rel, np.asarray(ranks, np.float64), np.inf)
    n_rel = rel.sum(1)
    none = n_rel == 0
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            if name == FULL_MRR:
                out[name] = np.where(none, np.nan, 1.0 / ranks.min(1, initial=np.inf))
                continue
            m = _FULL.match(name)
            if m is None:
                raise ValueError(f"unknown full-catalog metric {name!r}")
            fam, k = m.group(1), int(m.group(2))
            hit = ranks <= k
            if fam == "recall":
                val = hit.sum(1) / n_rel
            elif fam == "hr":
                val = hit.any(1).astype(np.float64)
            else:
                dcg = np.where(hit, 1.0 / np.log2(1.0 + ranks), 0.0).sum(1)
                disc = np.cumsum(1.0 / np.log2(2.0 + np.arange(k)))
                val = dcg / disc[np.minimum(n_rel, k) - 1]
            out[name] = np.where(none, np.nan, val)
    return out


def catalog_metrics(scores: np.ndarray, exclude: np.ndarray, relevant: np.ndarray,
                    names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Full-catalog metrics of (N, I) ``scores`` over the whole catalog: ``exclude`` (N, I) bool
    items never ranked, ``relevant`` (N, I) bool items to find (minus excluded ones).
    ``{name: (N,) float64}``; the reference implementation the chunked scoring must match."""
    scores = np.asarray(scores, np.float64)
    exclude, relevant = np.asarray(exclude, bool), np.asarray(relevant, bool)
    if scores.ndim != 2 or scores.shape != exclude.shape or scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape}, exclude {exclude.shape} and relevant "
                         f"{relevant.shape} must be equal (N, I) arrays")
    relevant = relevant & ~exclude
    if not np.isfinite(scores[~exclude]).all():
        raise ValueError("catalog scores of ranked items are NaN or infinite")
    n, i = scores.shape
    width = max(int(relevant.sum(1).max(initial=0)), 1)
    # each task's relevant items first (stable order), padded: (N, R) item rows and mask
    order = np.argsort(~relevant, axis=1, kind="stable")[:, :width]
    rel_mask = np.take_along_axis(relevant, order, 1)
    tasks = np.arange(n)[:, None]
    ref = (np.take_along_axis(scores, order, 1), tie_keys(seed, tasks, order), order)
    items = np.broadcast_to(np.arange(i), (n, i))
    cand = (scores, tie_keys(seed, tasks, items), items)
    above = count_above(ref, cand, ~exclude & ~relevant) + count_above(ref, ref, rel_mask)
    return metrics_from_ranks(above + 1, rel_mask, names)


# --------------------------------------------------------------------------- tasks and predict


def is_implicit(tasks: TaskArrays) -> bool:
    """Implicit tasks carry confidence weights (metarec.data: labels 1 positive, 0 negative)."""
    return getattr(tasks, "support_weights", None) is not None


def excluded_slots(tasks: TaskArrays) -> np.ndarray:
    """(N, S) bool: the support slots whose items are not ranked (module docstring)."""
    mask = tasks.support_mask.astype(bool)
    return mask & (tasks.support_ratings > 0) if is_implicit(tasks) else mask


def relevant_slots(tasks: TaskArrays, threshold: float, n_items: int) -> np.ndarray:
    """(N, Q) bool: the query slots whose items are relevant; a repeated item counts at its
    first slot only, an item of the excluded support not at all."""
    mask = tasks.query_mask.astype(bool)
    for name, items, m in (("query", tasks.query_items, mask),
                           ("support", tasks.support_items, tasks.support_mask.astype(bool))):
        bad = m & ((items < 0) | (items >= n_items))
        if bad.any():
            raise ValueError(f"{int(bad.sum())} {name} items lie outside the catalog of "
                             f"{n_items} item rows (e.g. row {int(items[bad][0])})")
    labels = tasks.query_ratings
    rel = mask & ((labels > 0) if is_implicit(tasks) else (labels >= threshold))
    q = tasks.query_items
    earlier = np.triu(q[:, :, None] == q[:, None, :], 1) & rel[:, :, None]  # [n, a, b]: a < b
    rel &= ~earlier.any(1)
    excl = excluded_slots(tasks)
    in_support = ((q[:, :, None] == tasks.support_items[:, None, :]) & excl[:, None, :]).any(2)
    return rel & ~in_support


def _catalog_query(tasks: TaskArrays, rel: np.ndarray, items: np.ndarray) -> TaskArrays:
    """``tasks`` whose query is its own slots (mask: relevant) followed by catalog ``items``
    (B,) for every task (mask true); labels 0 (no method reads them), weights 1."""
    n, b = len(tasks), len(items)
    fields = dict(
        query_items=np.concatenate([tasks.query_items, np.broadcast_to(items, (n, b))], 1),
        query_ratings=np.zeros((n, tasks.query_items.shape[1] + b), np.float32),
        query_mask=np.concatenate([rel, np.ones((n, b), bool)], 1).astype(
            tasks.query_mask.dtype))
    if getattr(tasks, "query_weights", None) is not None:
        fields["query_weights"] = np.ones(fields["query_items"].shape, np.float32)
    return dataclasses.replace(tasks, **fields)


def _take(tasks: TaskArrays, index: np.ndarray) -> TaskArrays:
    """The tasks at ``index``, optional fields (None) kept as they are."""
    return dataclasses.replace(tasks, **{k: v[index] for k, v in tasks.__dict__.items()
                                         if v is not None})


def chunk_shape(n_tasks: int, n_items: int, query: int, chunk: int) -> tuple[int, int]:
    """(tasks, items) per predict call so that tasks x (query + items) <= ``chunk`` scores."""
    if chunk <= query:
        raise ValueError(f"evaluation.full_catalog.chunk ({chunk}) must exceed the query "
                         f"width ({query}): each call scores a task's query and >= 1 item")
    items = min(n_items, chunk - query)
    return max(1, min(n_tasks, chunk // (query + items))), items


@dataclass(frozen=True)
class Catalog:
    """The catalog a full-catalog evaluation ranks: item rows 0..``n_items``-1, with
    ``evaluation.full_catalog``'s threshold and chunk and the seed of the tie keys."""

    n_items: int
    threshold: float = 4.0
    chunk: int = 262144
    seed: int = 0

    def scores(self, predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
               names: list[str]) -> TaskScores:
        """:func:`catalog_task_scores` of ``predict`` on ``tasks``."""
        return catalog_task_scores(predict, tasks, self.n_items, names,
                                   threshold=self.threshold, chunk=self.chunk, seed=self.seed)


def catalog_task_scores(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                        n_items: int, names: list[str], *, threshold: float, chunk: int,
                        seed: int = 0) -> TaskScores:
    """Full-catalog metrics ``names`` of ``predict`` on ``tasks`` against item rows
    0..``n_items``-1, chunked over tasks x items (at most ``chunk`` scores per call).

    Each call's query is the tasks' relevant query items plus a block of catalog items, so a
    relevant item is compared with each candidate within one call; the order among a task's
    relevant items is taken from its first call. Returns a TaskScores whose ``ranking`` holds
    the (N,) metrics and ``count`` the number of relevant items per task.
    """
    if n_items < 1:
        raise ValueError(f"the catalog has no items (n_items={n_items})")
    rel = relevant_slots(tasks, threshold, n_items)
    excl = excluded_slots(tasks)
    n, q = tasks.query_items.shape
    above = np.zeros((n, q), np.int64)
    t_step, i_step = chunk_shape(n, n_items, q, chunk)
    for t0 in range(0, n, t_step):
        idx = np.arange(t0, min(t0 + t_step, n))
        sub, r = _take(tasks, idx), rel[idx]
        pos = idx[:, None]
        blocked = np.zeros((len(idx), n_items), bool)  # excluded or relevant: not a candidate
        rows = np.broadcast_to(pos - t0, sub.support_items.shape)
        blocked[rows[excl[idx]], sub.support_items[excl[idx]]] = True
        blocked[np.broadcast_to(pos - t0, r.shape)[r], sub.query_items[r]] = True
        ref_keys = tie_keys(seed, pos, sub.query_items)
        for i0 in range(0, n_items, i_step):
            items = np.arange(i0, min(i0 + i_step, n_items))
            out = np.asarray(predict(_catalog_query(sub, r, items)), np.float64)
            if out.shape != (len(idx), q + len(items)):
                raise ValueError(f"predict returned {out.shape} scores for a catalog chunk of "
                                 f"{(len(idx), q + len(items))}")
            ok = ~blocked[:, items]
            if not np.isfinite(out[:, q:][ok]).all() or not np.isfinite(out[:, :q][r]).all():
                raise ValueError("catalog scores are NaN or infinite")
            ref = (out[:, :q], ref_keys, sub.query_items)
            cand_items = np.broadcast_to(items, ok.shape)
            above[idx] += count_above(ref, (out[:, q:], tie_keys(seed, pos, cand_items),
                                            cand_items), ok)
            if i0 == 0:
                above[idx] += count_above(ref, ref, r)
    ranking = metrics_from_ranks(above + 1, rel, names)
    zeros = np.zeros(n)
    return TaskScores(zeros, zeros.copy(), rel.sum(1).astype(np.float64), ranking)
