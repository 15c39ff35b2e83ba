"""Task batches and the losses of the inner and outer loops.

:class:`TaskBatch` holds N padded tasks as tensors (:func:`make_batch`; redrawn by :func:`resplit`
and :func:`sample_support`); padded support/query slots carry mask 0 and contribute nothing to
:func:`masked_mse` (the inner loop's objective and the query loss) or :func:`listnet_loss`.
The inner loop itself is :func:`metarec.adaptation.gradient.adapt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from metarec.data.arrays import TaskArrays


@dataclass
class TaskBatch:
    """N tasks as tensors on one device (see :class:`metarec.data.arrays.TaskArrays`).

    Shapes: ``user_cat`` (N, Fu) int64; ``support_items``/``support_ratings``/``support_mask``
    (N, S) int64/float32/float32; ``query_*`` likewise (N, Q). Masks are 1.0 for real slots.
    """

    user_cat: Tensor
    support_items: Tensor
    support_ratings: Tensor
    support_mask: Tensor
    query_items: Tensor
    query_ratings: Tensor
    query_mask: Tensor

    def __len__(self) -> int:
        return int(self.user_cat.shape[0])


def make_batch(user_table: Tensor, tasks: TaskArrays, index: np.ndarray | None = None,
               device: torch.device | str | None = None) -> TaskBatch:
    """Tensors of ``tasks[index]`` (all tasks when ``index`` is None) on ``device``.

    ``user_table`` is the (U, Fu) categorical user table (``Estimator.user_table``).
    Implicit tasks: each mask is multiplied by its confidence weights.
    """
    if index is not None:
        tasks = tasks.subset(index)
    device = user_table.device if device is None else torch.device(device)

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    s_mask, q_mask = tasks.support_mask.astype(np.float32), tasks.query_mask.astype(np.float32)
    if tasks.implicit:  # confidence weights ride in the masks: every loss weighs slots by them
        s_mask = s_mask * tasks.support_weights
        q_mask = q_mask * tasks.query_weights
    # Checked on the host, before the copy: no device synchronisation for the check.
    if len(tasks) and int(tasks.user_row.max()) >= user_table.shape[0]:
        raise ValueError(f"task user_row {int(tasks.user_row.max())} is outside the user table "
                         f"({user_table.shape[0]} rows): tasks and features do not match")
    rows = t(tasks.user_row, torch.long)
    return TaskBatch(
        user_cat=user_table.to(device)[rows],
        support_items=t(tasks.support_items, torch.long),
        support_ratings=t(tasks.support_ratings, torch.float32),
        support_mask=t(s_mask, torch.float32),
        query_items=t(tasks.query_items, torch.long),
        query_ratings=t(tasks.query_ratings, torch.float32),
        query_mask=t(q_mask, torch.float32),
    )


def _rank(members: Tensor, keys: Tensor) -> Tensor:
    """(N, K) rank of each member slot by ``keys`` among the members of its row (others last)."""
    return torch.argsort(torch.argsort(torch.where(members, keys, 2.0), dim=1), dim=1)


def resplit(batch: TaskBatch, keys: Tensor, implicit: bool = False) -> TaskBatch:
    """A new support/query split of every task of ``batch``, drawn by ``keys``.

    Each task's real ratings (support and query together) are ordered by ``keys`` (N, S + Q)
    uniform random numbers; the first Q become the query and the rest the support, padding last.
    Support and query keep their widths, and a task keeps its number of real ratings.
    ``implicit``: positives (label > 0) and sampled negatives are redrawn apart, so the query
    keeps its numbers of each (a query never turns into negatives only).
    """
    items = torch.cat([batch.support_items, batch.query_items], 1)
    ratings = torch.cat([batch.support_ratings, batch.query_ratings], 1)
    mask = torch.cat([batch.support_mask, batch.query_mask], 1)
    if keys.shape != mask.shape:
        raise ValueError(f"resplit: keys {tuple(keys.shape)} do not match the batch {tuple(mask.shape)}")
    keys = keys.to(mask.device, torch.float32)
    if implicit:
        real = mask > 0
        pos, neg = real & (ratings > 0), real & (ratings <= 0)
        qm = batch.query_mask > 0
        q_pos = (qm & (batch.query_ratings > 0)).sum(1, keepdim=True)
        q_neg = (qm & (batch.query_ratings <= 0)).sum(1, keepdim=True)
        in_query = (pos & (_rank(pos, keys) < q_pos)) | (neg & (_rank(neg, keys) < q_neg))
        # The query's draws first, then padding, then the support's real ratings.
        sort_key = torch.where(in_query, keys, torch.where(real, 3.0 + keys, 2.0))
    else:
        sort_key = torch.where(mask > 0, keys, 2.0)
    order = torch.argsort(sort_key, dim=1)
    items, ratings, mask = (t.gather(1, order) for t in (items, ratings, mask))
    q = batch.query_items.shape[1]
    return TaskBatch(user_cat=batch.user_cat,
                     support_items=items[:, q:], support_ratings=ratings[:, q:],
                     support_mask=mask[:, q:], query_items=items[:, :q],
                     query_ratings=ratings[:, :q], query_mask=mask[:, :q])


SHOT_DISTRIBUTIONS = ("uniform", "log-uniform")


def support_sizes(available: Tensor, draws: Tensor, *, full_prob: float, max_shots: int,
                  dist: str) -> Tensor:
    """Support sizes (N,) int64 of N tasks with ``available`` (N,) real support ratings.

    ``draws`` (N, 2) uniform numbers in [0, 1). A task keeps its whole support when its first
    draw is below ``full_prob``; otherwise it keeps k ratings, k in 0..``max_shots`` drawn from
    the second: ``uniform`` (each k equally likely) or ``log-uniform``
    (k = floor((K + 2)^u) - 1, P(k) proportional to log((k + 2) / (k + 1)): small supports,
    the ones a new user has, are the most frequent). k is capped at the task's available ratings.
    """
    if not 0.0 <= full_prob <= 1.0:
        raise ValueError(f"support full probability must lie in [0, 1], got {full_prob}")
    if max_shots < 0:
        raise ValueError(f"support max shots must be >= 0, got {max_shots}")
    if dist not in SHOT_DISTRIBUTIONS:
        raise ValueError(f"unknown support-size distribution {dist!r}; "
                         f"expected one of {SHOT_DISTRIBUTIONS}")
    available = available.long()
    u = draws.to(torch.float64)
    if dist == "uniform":
        k = torch.floor(u[:, 1] * (max_shots + 1))
    else:
        k = torch.floor(torch.exp(u[:, 1] * math.log(max_shots + 2))) - 1
    k = torch.minimum(k.long().clamp(0, max_shots), available)
    return torch.where(u[:, 0] < full_prob, available, k)


def subsample_support(batch: TaskBatch, sizes: Tensor, keys: Tensor,
                      neg_sizes: Tensor | None = None) -> TaskBatch:
    """``batch`` with each task's support mask cut to ``sizes`` (N,) real ratings.

    The ratings kept are those with the smallest ``keys`` (N, S) among the real slots; the
    others (and the padding) get mask 0. Items, ratings and the query are untouched, so masked
    slots are ignored exactly like padding (as :func:`metarec.evaluation.scoring.limit_support`
    does for the evaluation curves). Size 0 gives an all-zero support mask. ``neg_sizes``
    (implicit tasks): ``sizes`` counts positives (label > 0) and ``neg_sizes`` the sampled
    negatives kept beside them. Kept slots keep their weights (the mask's values).
    """
    mask = batch.support_mask
    if keys.shape != mask.shape or sizes.shape != mask.shape[:1]:
        raise ValueError(f"subsample_support: keys {tuple(keys.shape)} / sizes "
                         f"{tuple(sizes.shape)} do not match the support {tuple(mask.shape)}")
    keys = keys.to(mask.device, torch.float32)
    real = mask > 0
    if neg_sizes is None:
        groups = [(real, sizes)]
    else:
        positive = batch.support_ratings > 0
        groups = [(real & positive, sizes), (real & ~positive, neg_sizes)]
    kept = torch.zeros_like(real)
    for members, quota in groups:
        kept |= members & (_rank(members, keys) < quota.to(mask.device).unsqueeze(1))
    return replace(batch, support_mask=mask * kept.to(mask.dtype))


def sample_support(batch: TaskBatch, draws: Tensor, *, full_prob: float, max_shots: int,
                   dist: str, implicit: bool = False) -> TaskBatch:
    """``batch`` with support sizes drawn by :func:`support_sizes` (meta-training for every
    support size a user may bring, 0 included). ``draws`` (N, 2 + S) uniform numbers: two for
    the size, S keys choosing which ratings stay (:func:`subsample_support`). ``implicit``: the
    size counts positives, and each task keeps its own share of negatives for them.
    Everything stays on the batch's device (no host synchronisation: the fast training step,
    metarec.training.fast, runs it inside a CUDA graph)."""
    real = batch.support_mask > 0
    if not implicit:
        available = real.sum(1)
    else:
        available = (real & (batch.support_ratings > 0)).sum(1)
        negatives = (real & (batch.support_ratings <= 0)).sum(1)
    sizes = support_sizes(available, draws[:, :2].to(available.device),
                          full_prob=full_prob, max_shots=max_shots, dist=dist)
    neg_sizes = None
    if implicit:
        ratio = negatives.double() / available.clamp(min=1).double()
        neg_sizes = torch.minimum(torch.round(sizes.double() * ratio).long(), negatives)
    return subsample_support(batch, sizes, draws[:, 2:], neg_sizes)


def masked_mse(scores: Tensor, ratings: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real slots: (..., K) each -> (...) loss per task."""
    dtype = torch.promote_types(scores.dtype, torch.float32)  # bf16 autocast -> float32
    mask = mask.to(dtype)
    err = (scores.to(dtype) - ratings.to(dtype)) ** 2 * mask
    return err.sum(-1) / mask.sum(-1).clamp(min=1.0)


def listnet_loss(scores: Tensor, ratings: Tensor, mask: Tensor) -> Tensor:
    """ListNet (Cao et al., 2007) top-one cross-entropy per task over the real slots: the
    softmax of the true ratings against the log-softmax of the scores, (..., K) -> (...)."""
    dtype = torch.promote_types(scores.dtype, torch.float32)
    real = mask > 0
    neg = torch.finfo(dtype).min
    target = torch.softmax(torch.where(real, ratings.to(dtype), neg), -1)
    logp = torch.log_softmax(torch.where(real, scores.to(dtype), neg), -1)
    return -(target * torch.where(real, logp, 0.0)).sum(-1) * (real.sum(-1) > 1)
