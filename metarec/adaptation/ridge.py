"""Ridge adaptation (R2-D2, Bertinetto et al., ICLR 2019): the output layer in closed form.

The output layer is a linear head on the decision MLP's last hidden features (plus the item
factors when the model has ``head_factors``, plus a constant 1 for the bias), shrunk toward the
meta-learned output layer w0 = concat(W_out, 0 (f,), b_out) by per-dimension penalties ``lam``
(H + f + 1,). With Hs the support features, m the mask (a weight per slot) and y = offset +
Hs (w0 + dw) the support scores, the adapted head is one Newton step from dw = 0 on the
penalised support loss  S(y) + 1/2 dw^T diag(lam) dw, S the loss's unnormalised sum
(:func:`metarec.adaptation.losses.summed_loss`), g and C its gradient and curvature with
respect to the scores at y0 = offset + Hs w0::

    A = Hs^T C Hs + diag(lam);   b = -Hs^T g;   dw = A^-1 b
    score = offset + Hq (w0 + dw)

- ``mse`` (S = 1/2 sum m (y - r)^2, g = m (y0 - r), C = diag(m)): the objective is quadratic,
  so the step lands on its exact minimiser, the ridge regression of the support residuals
  dw = (Hs^T diag(m) Hs + diag(lam))^-1 Hs^T diag(m) (r - offset - Hs w0);
- ``bce`` (g = m (sigmoid(y0) - r), C = diag(m p (1 - p))): one Newton step of penalised
  logistic regression, i.e. one IRLS step (a weighted ridge regression on the working response);
- ``bpr``: the same step with the pairwise curvature (a Laplacian over the positive x negative
  pairs, :mod:`metarec.adaptation.losses`).

Why one step: it keeps the head a closed form, one SPD solve that meta-training differentiates
through and the ONNX graph computes with a fixed number of ops, and meta-training learns w0 and
``lam`` for exactly that one step (the outer loss sees its result, as MAML's sees its few
gradient steps); iterating to convergence would cost one solve per step in the graph and
training for a head that is re-learned per user from a handful of labels anyway. A is SPD
(C is positive semi-definite for all three losses, lam > 0).

With ``meta.ridge_size_power`` a task of n support ratings (n = sum m) is penalised with
lam ((n + 1) / 11)^p instead, one meta-learned exponent p for the weights and one for the bias
(:func:`size_penalties`; in the graphs too).

No support rating (all m = 0) gives dw = 0: the unadapted model's scores. With item factors q_i
among the features, the closed form fits the user's p_u of a rating b_u + b_i + p_u . q_i (and
the features of an item without training ratings carry zeros there: no collaborative term).

PyTorch: :func:`ridge_head` (``torch.linalg.solve`` in float32; the step itself is
:func:`newton_step`). ONNX: :func:`emit` solves the
(H+1)x(H+1) system with matrix products only: Newton-Schulz iterations for the inverse
(X <- X (2I - A X) from X = I / ||A||_F, which converges for symmetric positive definite A),
then iterative refinement; ``ITERATIONS`` covers condition numbers beyond 1e6 in float32. The
head features f come from the task graph (``task.extra``): ``model.onnx`` gathers them from
its initializer ``item_fac`` (I, f), the catalog's user graph reads them as inputs.
:func:`emit_state` gives the adapted head itself, for graphs that score candidates apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from metarec.adaptation.graph import CANDIDATES, SUPPORT
from metarec.adaptation.losses import (emit_summed_derivatives, emit_support_loss,
                                      summed_derivatives)
from metarec.adaptation.mlp import bias_name, emit_hidden, hidden, weight_name
from metarec.adaptation.spec import canonical_loss

if TYPE_CHECKING:
    from metarec.adaptation.graph import GraphBuilder, TaskGraph, Weights
    from metarec.adaptation.spec import Adaptation

ITERATIONS = 40  # Newton-Schulz steps for the inverse
SIZE_REF = 10.0  # support size at which size-dependent penalties equal ridge_lambda
REFINEMENTS = 2


# --------------------------------------------------------------------------- PyTorch


def hidden_features(params: Mapping[str, Tensor], x: Tensor, n_layers: int,
                    extra: Tensor | None = None) -> Tensor:
    """The last hidden layer, ``extra`` (..., K, f) features if any, and a constant 1:
    (..., K, F) -> (..., K, H + f + 1).

    The output layer is a linear head on these features (its weights and bias as one vector).
    """
    h = hidden(params, x, n_layers)
    parts = [h] if extra is None else [h, extra.to(h.dtype)]
    return torch.cat([*parts, torch.ones_like(h[..., :1])], -1)


def prior_weights(params: Mapping[str, Tensor], n_layers: int, n_extra: int) -> Tensor:
    """(H + f + 1,) w0: the meta-learned output layer, zeros for the f extra features."""
    w, b = params[weight_name(n_layers - 1)][0], params[bias_name(n_layers - 1)]
    return torch.cat([w, w.new_zeros(n_extra), b])


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """(N, H1, H1) SPD systems, (N, H1) right-hand sides -> (N, H1) solutions.

    ``solve_ex`` without its error check: ``linalg.solve`` reads the factorisation's status on
    the host (a device synchronisation in every training step). A is SPD by construction
    (lam > 0); a failed solve shows as non-finite scores, which the training loop reports.
    """
    return torch.linalg.solve_ex(a, b, check_errors=False)[0]


def size_penalties(lam: Tensor, power: Tensor | None, mask: Tensor) -> Tensor:
    """The penalties each task's solve uses: ``lam`` (H1,) itself when ``power`` is None, else
    (N, H1) lam * ((n + 1) / (SIZE_REF + 1)) ** power, n = sum of the task's support ``mask``
    (N, S): a penalty per dimension that grows (power > 0) or shrinks (power < 0) with the
    support size, equal to ``lam`` at SIZE_REF ratings."""
    if power is None:
        return lam
    size = torch.log((mask.sum(-1, keepdim=True) + 1.0) / (SIZE_REF + 1.0))  # (N, 1)
    return lam * torch.exp(power * size)


def newton_step(hs: Tensor, w0: Tensor, offset: Tensor, ratings: Tensor, mask: Tensor,
                lam: Tensor, loss: str = "mse") -> Tensor:
    """dw (N, H1) of one Newton step from w0 on the penalised support loss (module docstring).

    Shapes: ``hs`` (N, S, H1) support head features, ``w0`` (H1,), ``offset``/``ratings``/
    ``mask`` (N, S) (the scores at w0 are offset + hs w0), ``lam`` (H1,) or per task (N, H1),
    > 0.
    """
    diag = torch.diag_embed(lam).expand(hs.shape[0], -1, -1)
    if canonical_loss(loss) == "mse":  # the ridge regression of the residuals, as always
        # the mask once in b: a weight m (implicit confidences) counts m times, not m^2
        resid = (ratings - offset - hs @ w0) * mask
        hm = hs * mask.unsqueeze(-1)
        a = hm.transpose(1, 2) @ hs + diag
        b = (hs.transpose(1, 2) @ resid.unsqueeze(-1)).squeeze(-1)  # (N, H1)
        return _solve(a, b)
    d = summed_derivatives(loss, offset + hs @ w0, ratings, mask)
    ht = hs.transpose(1, 2)  # (N, H1, S)
    htc = (hs * d.curv.unsqueeze(-1)).transpose(1, 2) if d.diagonal else ht @ d.curv
    a = htc @ hs + diag
    b = -(ht @ d.grad.unsqueeze(-1)).squeeze(-1)
    return _solve(a, b)


def ridge_head(model: nn.Module, support_feats: Tensor, support_items: Tensor,
               support_ratings: Tensor, support_mask: Tensor, query_feats: Tensor,
               query_items: Tensor, lam: Tensor, loss: str = "mse",
               power: Tensor | None = None) -> Tensor:
    """Closed-form adaptation of the output layer for N tasks -> (N, Q) scores.

    Shapes: ``support_feats`` (N, S, F) tower features, items/ratings/mask (N, S);
    ``query_feats`` (N, Q, F), ``query_items`` (N, Q); ``lam`` (model.head_width + 1,) > 0;
    ``loss``: the support loss of the Newton step (mse: the ridge regression); ``power``
    (model.head_width + 1,) or None: the penalties' support-size exponents
    (:func:`size_penalties`).
    """
    params = model.decision_params()
    n = len(model.decision)
    hs = hidden_features(params, support_feats, n, model.head_features(support_items))  # (N, S, H1)
    hq = hidden_features(params, query_feats, n, model.head_features(query_items))  # (N, Q, H1)
    w0 = prior_weights(params, n, hs.shape[-1] - model.decision[-1].in_features - 1)
    # The linear system in float32 even under bf16 autocast: a bf16 Gram matrix is too coarse.
    with torch.autocast(hs.device.type, enabled=False):
        hs, hq, w0 = hs.float(), hq.float(), w0.float()
        lam = size_penalties(lam.float(), None if power is None else power.float(),
                             support_mask.float())
        dw = newton_step(hs, w0, model.offset(support_items).float(), support_ratings.float(),
                         support_mask.float(), lam, loss)
        return model.offset(query_items).float() + hq @ w0 + (hq * dw.unsqueeze(1)).sum(-1)


def reference_scores(model: nn.Module, adaptation: Adaptation, user_cat: Tensor,
                     items: Tensor, ratings: Tensor, mask: Tensor, candidates: Tensor) -> Tensor:
    """:func:`ridge_head` for one task: (Fu,), (S,) x3, (C,) -> (C,)."""
    with torch.no_grad():
        return ridge_head(model, model.embed(user_cat[None], items[None]), items[None],
                          ratings[None], mask[None], model.embed(user_cat[None], candidates[None]),
                          candidates[None], adaptation.ridge_lambda, adaptation.loss,
                          adaptation.ridge_size_power)[0]


# --------------------------------------------------------------------------- ONNX


ITEM_FACTORS = "item_fac"  # (I, f) initializer of the item factors in model.onnx (head_factors)


def _emit_hidden_features(task: TaskGraph, x: str, weights: Weights, rows: str) -> str:
    """(K, F) -> (K, H + f + 1): :func:`hidden_features` in the graph, the f head features of
    the items ``rows`` from ``task.extra`` when f > 0."""
    g = task.g
    h = emit_hidden(g, x, weights)
    ones = g.op("Expand", "one_1x1", g.op("Concat", g.op("Shape", h, end=1), "axis_one", axis=0))
    extra = [task.extra(rows)] if task.n_extra else []
    return g.op("Concat", h, *extra, ones, axis=1)


def _emit_solve(g: GraphBuilder, a: str, b: str, k: int) -> str:
    """x = A^-1 b for (k, k) SPD ``a`` and (k, 1) ``b`` by Newton-Schulz and refinement."""
    g.const("ridge_eye2", (2.0 * np.eye(k)).astype(np.float32))
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", a, a), keepdims=0))
    x = g.op("Div", g.const("ridge_eye", np.eye(k, dtype=np.float32)), norm)
    for _ in range(ITERATIONS):
        x = g.op("MatMul", x, g.op("Sub", "ridge_eye2", g.op("MatMul", a, x)))
    dw = g.op("MatMul", x, b)
    for _ in range(REFINEMENTS):
        dw = g.op("Add", dw, g.op("MatMul", x, g.op("Sub", b, g.op("MatMul", a, dw))))
    return dw


def prior_head(task: TaskGraph, weights: Weights) -> str:
    """(H + f + 1, 1) w0 of ``weights``' output layer: its weights, zeros for the f head
    features, its bias (:func:`prior_weights`)."""
    g = task.g
    wt_out, b_out = weights[-1]
    zeros = [g.const("ridge_w0_extra", np.zeros((task.n_extra, 1), np.float32))] \
        if task.n_extra else []
    return g.op("Concat", wt_out, *zeros, g.op("Unsqueeze", b_out, "axis_zero"), axis=0)


def emit_head(task: TaskGraph, adaptation: Adaptation) -> str:
    """The adapted head w0 + dw, (H + f + 1, 1), of :func:`ridge_head` for one task: the
    Newton step of ``adaptation.loss`` on the support set, with standard ONNX ops."""
    lam = adaptation.ridge_lambda.detach().float().cpu().numpy().reshape(-1)
    g = task.g
    k = lam.shape[0]
    if k != task.n_hidden + task.n_extra + 1 or not np.all(lam > 0):
        raise ValueError(f"ridge_lambda must hold {task.n_hidden + task.n_extra + 1} positive "
                         f"values, got shape {lam.shape}")
    if adaptation.ridge_size_power is None:
        lam_diag = g.const("ridge_lam", np.diag(lam))
    else:  # size_penalties: lam * ((n + 1) / (SIZE_REF + 1)) ** power, n = sum of the mask
        power = adaptation.ridge_size_power.detach().float().cpu().numpy().reshape(-1)
        n = g.op("ReduceSum", "support_mask", keepdims=1)  # (1,)
        size = g.op("Log", g.op("Div", g.op("Add", n, g.const("ridge_one", np.ones(1, np.float32))),
                                g.const("ridge_ref", np.full(1, SIZE_REF + 1.0, np.float32))))
        scaled = g.op("Mul", g.const("ridge_lam_vec", lam.astype(np.float32)),
                      g.op("Exp", g.op("Mul", g.const("ridge_pow", power.astype(np.float32)),
                                       size)))  # (H1,)
        lam_diag = g.op("Mul", g.const("ridge_lam_eye", np.eye(k, dtype=np.float32)),
                        g.op("Unsqueeze", scaled, "axis_zero"))  # diag(scaled)
    w0 = prior_head(task, task.weights)  # (H1, 1)
    hs = _emit_hidden_features(task, task.features(SUPPORT), task.weights, SUPPORT)
    base_s = g.op("Reshape", g.op("MatMul", hs, w0), "minus_one")  # (S,)
    s_off = task.offset(SUPPORT)
    if canonical_loss(adaptation.loss) == "mse":  # the ridge regression, as always
        if s_off is not None:
            base_s = g.op("Add", base_s, s_off)
        resid = g.op("Mul", g.op("Sub", "support_ratings", base_s), "support_mask")  # (S,)
        hm = g.op("Mul", hs, g.op("Unsqueeze", "support_mask", "axis_one"))  # (S, H1)
        hmt = g.op("Transpose", hm, perm=[1, 0])
        a = g.op("Add", g.op("MatMul", hmt, hs), lam_diag)  # (H1, H1)
        b = g.op("MatMul", g.op("Transpose", hs, perm=[1, 0]),  # the mask once, as in torch
                 g.op("Unsqueeze", resid, "axis_one"))  # (H1, 1)
        return g.op("Add", w0, _emit_solve(g, a, b, k))
    y0 = base_s if s_off is None else g.op("Add", s_off, base_s)
    support = emit_support_loss(g, adaptation.loss, "support_ratings", "support_mask")
    grad_, curv, diagonal = emit_summed_derivatives(g, support, y0)
    ht = g.op("Transpose", hs, perm=[1, 0])  # (H1, S)
    htc = g.op("Transpose", g.op("Mul", hs, g.op("Unsqueeze", curv, "axis_one")), perm=[1, 0]) \
        if diagonal else g.op("MatMul", ht, curv)
    a = g.op("Add", g.op("MatMul", htc, hs), lam_diag)  # (H1, H1)
    b = g.op("Neg", g.op("MatMul", ht, g.op("Unsqueeze", grad_, "axis_one")))  # (H1, 1)
    return g.op("Add", w0, _emit_solve(g, a, b, k))


def emit_state(task: TaskGraph, adaptation: Adaptation) -> tuple[Weights, str | None]:
    """The ridge kind's adapted state: the decision layers unchanged, and the adapted head."""
    return task.weights, emit_head(task, adaptation)


def emit(task: TaskGraph, adaptation: Adaptation) -> str:
    """:func:`ridge_head` for one task with standard ONNX ops -> (C,) candidate scores."""
    g = task.g
    head = emit_head(task, adaptation)
    hq = _emit_hidden_features(task, task.features(CANDIDATES), task.weights, CANDIDATES)
    scores = g.op("Reshape", g.op("MatMul", hq, head), "minus_one")  # (C,)
    c_off = task.offset(CANDIDATES)
    return scores if c_off is None else g.op("Add", scores, c_off)
