"""Task batches and the losses of the inner and outer loops.

:class:`TaskBatch` holds N padded tasks as tensors (:func:`make_batch`, :func:`resplit`);
padded support/query slots carry mask 0 and contribute nothing to :func:`masked_mse` (the
inner loop's objective and the query loss) or :func:`listnet_loss`. The inner loop itself is
:func:`metarec.adaptation.gradient.adapt`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """
    if index is not None:
        tasks = tasks.subset(index)
    device = user_table.device if device is None else torch.device(device)

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    rows = t(tasks.user_row, torch.long)
    if len(tasks) and int(rows.max()) >= user_table.shape[0]:
        raise ValueError(f"task user_row {int(rows.max())} is outside the user table "
                         f"({user_table.shape[0]} rows): tasks and features do not match")
    return TaskBatch(
        user_cat=user_table.to(device)[rows],
        support_items=t(tasks.support_items, torch.long),
        support_ratings=t(tasks.support_ratings, torch.float32),
        support_mask=t(tasks.support_mask, torch.float32),
        query_items=t(tasks.query_items, torch.long),
        query_ratings=t(tasks.query_ratings, torch.float32),
        query_mask=t(tasks.query_mask, torch.float32),
    )


def resplit(batch: TaskBatch, keys: Tensor) -> TaskBatch:
    """A new support/query split of every task of ``batch``, drawn by ``keys``.

    Each task's real ratings (support and query together) are ordered by ``keys`` (N, S + Q)
    uniform random numbers; the first Q become the query and the rest the support, padding last.
    Support and query keep their widths, and a task keeps its number of real ratings.
    """
    items = torch.cat([batch.support_items, batch.query_items], 1)
    ratings = torch.cat([batch.support_ratings, batch.query_ratings], 1)
    mask = torch.cat([batch.support_mask, batch.query_mask], 1)
    if keys.shape != mask.shape:
        raise ValueError(f"resplit: keys {tuple(keys.shape)} do not match the batch {tuple(mask.shape)}")
    order = torch.argsort(torch.where(mask > 0, keys.to(mask.device, torch.float32), 2.0), dim=1)
    items, ratings, mask = (t.gather(1, order) for t in (items, ratings, mask))
    q = batch.query_items.shape[1]
    return TaskBatch(user_cat=batch.user_cat,
                     support_items=items[:, q:], support_ratings=ratings[:, q:],
                     support_mask=mask[:, q:], query_items=items[:, :q],
                     query_ratings=ratings[:, :q], query_mask=mask[:, :q])


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
