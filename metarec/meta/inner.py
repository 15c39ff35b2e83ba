"""The one inner loop: functional adaptation on a task's support set (torch.func).

Everything that adapts (meta-training, validation, testing, export parity, serving) calls
:func:`adapt`. It is a pure function of a parameter dict (``functional_call`` + ``grad``, as
in PyTorch's functorch MAML example), written for one task and batched over tasks with
``vmap`` by :func:`adapt_batch`. Padded support/query slots carry mask 0 and contribute nothing.

Second order: the outer autograd graph runs through ``torch.func.grad``, so the query loss
differentiates through the inner updates unless ``first_order`` detaches the inner gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.data.arrays import TaskArrays

Params = dict[str, Tensor]


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


def hidden_features(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """The decision MLP's last hidden layer plus a constant 1: (..., K, F) -> (..., K, H + 1).

    The output layer is a linear head on these features (its weights and bias as one vector).
    """
    n = len(model.decision)
    h = x
    for i in range(n - 1):
        h = torch.relu(h @ params[f"decision.{i}.weight"].T + params[f"decision.{i}.bias"])
    return torch.cat([h, torch.ones_like(h[..., :1])], -1)


def ridge_head(model: nn.Module, support_feats: Tensor, support_items: Tensor,
               support_ratings: Tensor, support_mask: Tensor, query_feats: Tensor,
               query_items: Tensor, lam: Tensor) -> Tensor:
    """Closed-form adaptation of the output layer (R2-D2, Bertinetto et al., ICLR 2019):
    the ridge regression of a task's support residuals on the last hidden features, shrunk
    toward the meta-learned output layer by the per-dimension penalties ``lam``.

    Shapes: ``support_feats`` (N, S, F) tower features, items/ratings/mask (N, S);
    ``query_feats`` (N, Q, F), ``query_items`` (N, Q); ``lam`` (H + 1,) > 0 -> (N, Q) scores.
    With w0 = concat(W_out, b_out), Hs the support features and m the mask::

        dw = (Hs^T diag(m) Hs + diag(lam))^-1 Hs^T diag(m) (r - offset - Hs w0)
        score = offset + Hq (w0 + dw)

    No support rating (all m = 0) gives dw = 0: the unadapted model's scores.
    """
    params = model.decision_params()
    last = len(model.decision) - 1
    w0 = torch.cat([params[f"decision.{last}.weight"][0], params[f"decision.{last}.bias"]])
    hs = hidden_features(model, params, support_feats)  # (N, S, H1)
    hq = hidden_features(model, params, query_feats)  # (N, Q, H1)
    # The linear system in float32 even under bf16 autocast: a bf16 Gram matrix is too coarse.
    with torch.autocast(hs.device.type, enabled=False):
        hs, hq, w0, lam = hs.float(), hq.float(), w0.float(), lam.float()
        mask = support_mask.float()
        resid = (support_ratings.float() - model.offset(support_items).float() - hs @ w0) * mask
        hm = hs * mask.unsqueeze(-1)
        a = hm.transpose(1, 2) @ hs + torch.diag_embed(lam).expand(hs.shape[0], -1, -1)
        b = (hm.transpose(1, 2) @ resid.unsqueeze(-1)).squeeze(-1)  # (N, H1)
        dw = torch.linalg.solve(a, b)
        return model.offset(query_items).float() + hq @ w0 + (hq * dw.unsqueeze(1)).sum(-1)


def task_scores(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                user_cat: Tensor, items: Tensor, feats: Tensor | None = None) -> Tensor:
    """Scores of one task's items with ``params``: (Fu,), (K,) [, (K, F)] -> (K,)."""
    return functional_call(model, (dict(params), dict(buffers)), (user_cat, items),
                           {"feats": feats})


def adapt(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
          user_cat: Tensor, items: Tensor, ratings: Tensor, mask: Tensor, *, steps: int,
          lr: float, adapted: frozenset[str] | set[str], first_order: bool,
          per_param_lr: Mapping[str, Tensor] | None = None,
          feats: Tensor | None = None) -> Params:
    """Adapt ``params`` to one task's support set by ``steps`` gradient steps on masked MSE.

    Args:
        params: every parameter of ``model`` by name (the meta-parameters).
        user_cat: (Fu,) the task's user row; items (S,) support item rows; ratings/mask (S,).
        adapted: names of the parameters the inner loop updates; the rest stay as given.
        first_order: detach inner gradients (FOMAML); otherwise second order flows through.
        per_param_lr: Meta-SGD's learned rates by parameter name (shape of each parameter);
            when given it replaces the scalar ``lr``.
        feats: (S, F) precomputed tower features (only valid when ``adapted`` holds nothing
            but decision parameters, as in MeLU mode).
    Returns:
        All parameters by name, the adapted ones replaced by their fast weights.
    """
    missing = set(adapted) - set(params)
    if missing:
        raise ValueError(f"adapted parameters not in the model: {sorted(missing)}")
    fast = {n: params[n] for n in adapted}
    frozen = {n: p for n, p in params.items() if n not in fast}

    def support_loss(fast_params: Params) -> Tensor:
        scores = task_scores(model, {**frozen, **fast_params}, buffers, user_cat, items, feats)
        return masked_mse(scores, ratings, mask)

    for _ in range(steps):
        grads = grad(support_loss)(fast)
        new = {}
        for name, p in fast.items():
            g = grads[name].detach() if first_order else grads[name]
            step = lr if per_param_lr is None else per_param_lr[name]
            new[name] = p - step * g
        fast = new
    return {**frozen, **fast}


def adapt_batch(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                batch: TaskBatch, *, steps: int, lr: float, adapted: frozenset[str],
                first_order: bool, per_param_lr: Mapping[str, Tensor] | None = None,
                feats: Tensor | None = None) -> Params:
    """:func:`adapt` vmapped over the N tasks of ``batch``.

    Returns every parameter; adapted ones carry a leading task dimension N, the others do not
    (see :func:`query_scores`). ``feats``: (N, S, F) precomputed support features or None.
    """
    frozen = {n: p for n, p in params.items() if n not in adapted}
    shared = {n: p for n, p in params.items() if n in adapted}

    def one(user_cat: Tensor, items: Tensor, ratings: Tensor, mask: Tensor,
            task_feats: Tensor | None) -> Params:
        out = adapt(model, {**frozen, **shared}, buffers, user_cat, items, ratings, mask,
                    steps=steps, lr=lr, adapted=adapted, first_order=first_order,
                    per_param_lr=per_param_lr, feats=task_feats)
        return {n: out[n] for n in adapted}

    in_feats = None if feats is None else 0
    fast = vmap(one, in_dims=(0, 0, 0, 0, in_feats))(
        batch.user_cat, batch.support_items, batch.support_ratings, batch.support_mask, feats)
    return {**frozen, **fast}


def query_scores(model: nn.Module, fast: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 adapted: frozenset[str], user_cat: Tensor, items: Tensor,
                 feats: Tensor | None = None) -> Tensor:
    """Scores of (N, K) items with per-task parameters from :func:`adapt_batch` -> (N, K)."""
    frozen = {n: p for n, p in fast.items() if n not in adapted}
    batched = {n: p for n, p in fast.items() if n in adapted}

    def one(task_params: Params, u: Tensor, it: Tensor, f: Tensor | None) -> Tensor:
        return task_scores(model, {**frozen, **task_params}, buffers, u, it, f)

    return vmap(one, in_dims=(0, 0, 0, None if feats is None else 0))(batched, user_cat, items, feats)


def query_loss(model: nn.Module, fast: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
               adapted: frozenset[str], batch: TaskBatch, feats: Tensor | None = None) -> Tensor:
    """Mean over tasks of the masked query MSE under the adapted parameters -> scalar."""
    scores = query_scores(model, fast, buffers, adapted, batch.user_cat, batch.query_items, feats)
    return masked_mse(scores, batch.query_ratings, batch.query_mask).mean()
