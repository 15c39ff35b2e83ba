"""Gradient adaptation: the one inner loop (torch.func) and its ONNX emitter.

PyTorch: everything that adapts by gradient steps (meta-training, validation, testing, export
parity) calls :func:`adapt` (steps on the support loss ``loss``: mse, bce or bpr, see
:mod:`metarec.adaptation.losses`), a pure function of a parameter dict (``functional_call`` +
``grad``, as in PyTorch's functorch MAML example), written for one task and batched over tasks
with ``vmap`` by :func:`adapt_batch`. Padded support/query slots carry mask 0 and contribute
nothing. Second order: the outer autograd graph runs through ``torch.func.grad``, so the query
loss differentiates through the inner updates unless ``first_order`` detaches the inner
gradients.

ONNX (:func:`emit`): the same steps on the decision MLP inside the graph (MeLU mode: towers
fixed), with the backward written out. dL/dy is the support loss's written-out gradient
(:func:`metarec.adaptation.losses.emit_loss_grad`; for ``masked_mse``
2 m (y - r) / max(sum m, 1))::

    g_n = dL/dy[:, None] (S, 1);  dWt_i = h_{i-1}^T g_i;  db_i = sum_rows g_i
    g_{i-1} = (g_i Wt_i^T) * [z_{i-1} > 0]               (ReLU backward, as torch's)
    Wt_i <- Wt_i - lr_i dWt_i;  b_i <- b_i - lr_i db_i   (lr_i: scalar, or per-entry rates)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.adaptation.graph import SUPPORT
from metarec.adaptation.mlp import (DECISION_PREFIX, bias_name, emit_candidate_scores,
                                    emit_scores, weight_name)
from metarec.adaptation.losses import (SupportLoss, emit_loss_grad, emit_support_loss,
                                      loss_function)
from metarec.meta.inner import TaskBatch

if TYPE_CHECKING:
    from metarec.adaptation.graph import GraphBuilder, TaskGraph, Weights
    from metarec.adaptation.spec import Adaptation

Params = dict[str, Tensor]


# --------------------------------------------------------------------------- PyTorch


def task_scores(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                user_cat: Tensor, items: Tensor, feats: Tensor | None = None) -> Tensor:
    """Scores of one task's items with ``params``: (Fu,), (K,) [, (K, F)] -> (K,)."""
    return functional_call(model, (dict(params), dict(buffers)), (user_cat, items),
                           {"feats": feats})


def adapt(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
          user_cat: Tensor, items: Tensor, ratings: Tensor, mask: Tensor, *, steps: int,
          lr: float, adapted: frozenset[str] | set[str], first_order: bool,
          per_param_lr: Mapping[str, Tensor] | None = None,
          feats: Tensor | None = None, loss: str = "mse") -> Params:
    """Adapt ``params`` to one task's support set by ``steps`` gradient steps on its loss.

    Args:
        params: every parameter of ``model`` by name (the meta-parameters).
        user_cat: (Fu,) the task's user row; items (S,) support item rows; ratings/mask (S,).
        adapted: names of the parameters the inner loop updates; the rest stay as given.
        first_order: detach inner gradients (FOMAML); otherwise second order flows through.
        per_param_lr: Meta-SGD's learned rates by parameter name (shape of each parameter);
            when given it replaces the scalar ``lr``.
        feats: (S, F) precomputed tower features (only valid when ``adapted`` holds nothing
            but decision parameters, as in MeLU mode).
        loss: the support loss (:func:`metarec.adaptation.losses.loss_function`; the mask
            weighs each slot).
    Returns:
        All parameters by name, the adapted ones replaced by their fast weights.
    """
    missing = set(adapted) - set(params)
    if missing:
        raise ValueError(f"adapted parameters not in the model: {sorted(missing)}")
    fast = {n: params[n] for n in adapted}
    frozen = {n: p for n, p in params.items() if n not in fast}
    loss_fn = loss_function(loss)

    def support_loss(fast_params: Params) -> Tensor:
        scores = task_scores(model, {**frozen, **fast_params}, buffers, user_cat, items, feats)
        return loss_fn(scores, ratings, mask)

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
                feats: Tensor | None = None, loss: str = "mse") -> Params:
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
                    per_param_lr=per_param_lr, feats=task_feats, loss=loss)
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
               adapted: frozenset[str], batch: TaskBatch, feats: Tensor | None = None,
               loss: str = "mse") -> Tensor:
    """Mean over tasks of the query loss ``loss`` under the adapted parameters -> scalar."""
    scores = query_scores(model, fast, buffers, adapted, batch.user_cat, batch.query_items, feats)
    return loss_function(loss)(scores, batch.query_ratings, batch.query_mask).mean()


def reference_scores(model: nn.Module, adaptation: Adaptation, user_cat: Tensor,
                     items: Tensor, ratings: Tensor, mask: Tensor, candidates: Tensor) -> Tensor:
    """Scores of ``candidates`` after :func:`adapt` on one task's support set, as the learners'
    ``predict`` computes them (first order; towers once when only the decision MLP adapts).

    Shapes: user_cat (Fu,), items/ratings/mask (S,), candidates (C,) -> (C,).
    """
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    towers_fixed = all(n.startswith(DECISION_PREFIX) for n in adaptation.adapted)
    feats = model.embed(user_cat, items) if towers_fixed else None
    fast = adapt(model, params, buffers, user_cat, items, ratings, mask,
                 steps=adaptation.steps, lr=adaptation.lr, adapted=adaptation.adapted,
                 first_order=True, per_param_lr=adaptation.per_param_lr, feats=feats,
                 loss=adaptation.loss)
    c_feats = model.embed(user_cat, candidates) if towers_fixed else None
    return task_scores(model, fast, buffers, user_cat, candidates, c_feats).detach()


# --------------------------------------------------------------------------- ONNX


def emit_inner_step(g: GraphBuilder, x: str, support: SupportLoss, weights: Weights,
                    rates: Weights, offset: str | None = None) -> Weights:
    """One gradient step on the support loss ``support``; returns the new weights.

    ``x`` (S, F) support features; ``rates`` per layer (lr_Wt, lr_b) names; ``offset``: (S,)
    per-item score offsets added to the MLP output (Estimator.offset): they change the
    residual, not the derivative of the score with respect to the weights.
    """
    from onnx import TensorProto

    y, zs, hs = emit_scores(g, x, weights)
    if offset is not None:
        y = g.op("Add", y, offset)
    grad_ = g.op("Unsqueeze", emit_loss_grad(g, support, y), "axis_one")  # (S, 1)
    new: list[tuple[str, str]] = [("", "")] * len(weights)
    for i in reversed(range(len(weights))):
        wt, b = weights[i]
        d_wt = g.op("MatMul", g.op("Transpose", hs[i], perm=[1, 0]), grad_)  # (in, out)
        d_b = g.op("ReduceSum", grad_, "axis_zero", keepdims=0)  # (out,)
        if i > 0:
            back = g.op("MatMul", grad_, g.op("Transpose", wt, perm=[1, 0]))  # (S, in)
            relu_mask = g.op("Cast", g.op("Greater", zs[i - 1], "zero"), to=TensorProto.FLOAT)
            grad_ = g.op("Mul", back, relu_mask)
        new[i] = (g.op("Sub", wt, g.op("Mul", rates[i][0], d_wt)),
                  g.op("Sub", b, g.op("Mul", rates[i][1], d_b)))
    return tuple(new)


def _emit_rates(g: GraphBuilder, adaptation: Adaptation, n_layers: int) -> Weights:
    """Per layer (lr_Wt, lr_b) initializers: scalars ``lr``, or the per-entry rates (the
    weight's transposed like its weight)."""
    rates = []
    for i in range(n_layers):
        if adaptation.per_param_lr is None:
            lr_wt = lr_b = np.array(adaptation.lr, np.float32)
        else:
            lr_wt = adaptation.per_param_lr[weight_name(i)].detach().float().cpu().numpy().T.copy()
            lr_b = adaptation.per_param_lr[bias_name(i)].detach().float().cpu().numpy().copy()
        rates.append((g.const(f"lr_Wt_{i}", lr_wt), g.const(f"lr_b_{i}", lr_b)))
    return tuple(rates)


def emit_weights(task: TaskGraph, adaptation: Adaptation) -> Weights:
    """The decision layers after ``adaptation.steps`` inner steps on the support set."""
    g, weights = task.g, task.weights
    if adaptation.steps > 0:
        rates = _emit_rates(g, adaptation, len(weights))
        x_support = task.features(SUPPORT)  # (S, F), fixed across steps
        support = emit_support_loss(g, adaptation.loss, "support_ratings", "support_mask")
        offset = task.offset(SUPPORT)
        for _ in range(adaptation.steps):
            weights = emit_inner_step(g, x_support, support, weights, rates, offset)
    return weights


def emit_state(task: TaskGraph, adaptation: Adaptation) -> tuple[Weights, str | None]:
    """The gradient kind's adapted state: every decision layer after the inner steps (no
    separate head: the adapted output layer is it)."""
    return emit_weights(task, adaptation), None


def emit(task: TaskGraph, adaptation: Adaptation) -> str:
    """``adaptation.steps`` inner steps on the support set, then the (C,) candidate scores."""
    return emit_candidate_scores(task, emit_weights(task, adaptation))
