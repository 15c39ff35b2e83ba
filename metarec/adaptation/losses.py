"""The support and query losses, their derivatives written out, and their ONNX twins.

Every loss is per task: scores, labels and mask (..., K) -> (...). The mask is a non-negative
weight per slot (0: padding; implicit tasks fold their confidence weights into it), so every
loss is a weighted one:

- ``mse`` (ratings): sum_k m_k (s_k - r_k)^2 / max(sum m, 1)  (:func:`masked_mse`);
- ``bce`` (0/1 labels, scores are logits): sum_k m_k bce(s_k, r_k) / max(sum m, 1) with
  bce(s, r) = softplus(s) - r s, the cross-entropy of sigmoid(s) against r;
- ``bpr`` (Rendle et al., UAI 2009): over the pairs of a positive p (m > 0, r > 0) and a
  negative n (m > 0, r == 0) of the same task, weight w_pn = m_p m_n,
  sum_pn w_pn softplus(-(s_p - s_n)) / sum_pn w_pn, and 0 for a task without such a pair.

Each loss is ``scale * S`` with S an unnormalised sum (the objective of the ridge Newton step,
:mod:`metarec.adaptation.ridge`): S = 1/2 sum m (s - r)^2 (scale 2 / max(sum m, 1)), S =
sum m bce (scale 1 / max(sum m, 1)), S = sum w softplus (scale 1 / sum w). Derivatives of S
with respect to the scores, as :class:`Derivatives` (gradient g (..., K), curvature C)::

    mse: g = m (s - r)                   C = diag(m)
    bce: g = m (sigmoid(s) - r)          C = diag(m sigmoid(s) (1 - sigmoid(s)))
    bpr: q_pn = w_pn sigmoid(-(s_p - s_n));  g_k = sum_p q_pk - sum_n q_kn
         c_pn = w_pn sigmoid(d_pn) sigmoid(-d_pn);  C = sum_pn c_pn (e_p - e_n)(e_p - e_n)^T
                                                    = diag(rowsum c + colsum c) - c - c^T

(C as its diagonal (..., K) for mse and bce, a (..., K, K) matrix for bpr.) The ONNX emitters
write the same formulas into a graph for one task (S,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metarec.adaptation.spec import Loss, canonical_loss
from metarec.meta.inner import masked_mse

if TYPE_CHECKING:
    from metarec.adaptation.graph import GraphBuilder

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- PyTorch


def _as_float(scores: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dtype = torch.promote_types(scores.dtype, torch.float32)  # bf16 autocast -> float32
    return scores.to(dtype), labels.to(dtype), mask.to(dtype)


def masked_bce(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Weighted mean binary cross-entropy of logits ``scores`` against ``labels``:
    (..., K) each -> (...)."""
    s, r, m = _as_float(scores, labels, mask)
    return ((F.softplus(s) - r * s) * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def pair_weights(labels: Tensor, mask: Tensor) -> Tensor:
    """(..., K, K) w[p, n] = m_p m_n for a positive p and a negative n, else 0."""
    real = mask > 0
    pos = torch.where(real & (labels > 0), mask, torch.zeros_like(mask))
    neg = torch.where(real & (labels == 0), mask, torch.zeros_like(mask))
    return pos.unsqueeze(-1) * neg.unsqueeze(-2)


def _pair_total(w: Tensor) -> Tensor:
    """(...) sum of the pair weights, 1 where a task has no pair (its loss is then 0)."""
    total = w.sum((-2, -1))
    return torch.where(total > 0, total, torch.ones_like(total))


def masked_bpr(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Weighted mean BPR loss over a task's positive x negative pairs: (..., K) -> (...)."""
    s, r, m = _as_float(scores, labels, mask)
    w = pair_weights(r, m)
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # (..., K, K): s_p - s_n
    return (w * F.softplus(-diff)).sum((-2, -1)) / _pair_total(w)


LOSS_FUNCTIONS: dict[Loss, LossFn] = {"mse": masked_mse, "bce": masked_bce, "bpr": masked_bpr}


def loss_function(name: str) -> LossFn:
    """The per-task loss ``name`` (``auto`` = ``mse``): (scores, labels, mask) -> (...)."""
    return LOSS_FUNCTIONS[canonical_loss(name)]


def masked_loss(name: str, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """The loss ``name`` per task: (..., K) each -> (...)."""
    return loss_function(name)(scores, labels, mask)


@dataclass(frozen=True)
class Derivatives:
    """Gradient (..., K) and curvature of a loss with respect to the scores; the curvature is
    its diagonal (..., K) (mse, bce) or the full (..., K, K) matrix (bpr)."""

    grad: Tensor
    curv: Tensor

    @property
    def diagonal(self) -> bool:
        return self.curv.dim() == self.grad.dim()

    def matrix(self) -> Tensor:
        """The curvature as a (..., K, K) matrix."""
        return torch.diag_embed(self.curv) if self.diagonal else self.curv

    def scaled(self, scale: Tensor) -> "Derivatives":
        """Both times a per-task ``scale`` (...)."""
        c = scale.unsqueeze(-1) if self.diagonal else scale[..., None, None]
        return Derivatives(self.grad * scale.unsqueeze(-1), self.curv * c)


def summed_loss(name: str, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """S, the unnormalised sum of the loss ``name`` (the ridge step's objective): (...)."""
    loss = canonical_loss(name)
    s, r, m = _as_float(scores, labels, mask)
    if loss == "mse":
        return 0.5 * ((s - r) ** 2 * m).sum(-1)
    if loss == "bce":
        return ((F.softplus(s) - r * s) * m).sum(-1)
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)
    return (pair_weights(r, m) * F.softplus(-diff)).sum((-2, -1))


def loss_scale(name: str, labels: Tensor, mask: Tensor) -> Tensor:
    """(...) the factor with ``masked_loss = loss_scale * summed_loss``."""
    loss = canonical_loss(name)
    _, r, m = _as_float(mask, labels, mask)
    if loss == "bpr":
        return 1.0 / _pair_total(pair_weights(r, m))
    return (2.0 if loss == "mse" else 1.0) / m.sum(-1).clamp(min=1.0)


def summed_derivatives(name: str, scores: Tensor, labels: Tensor, mask: Tensor) -> Derivatives:
    """Gradient and curvature of :func:`summed_loss` with respect to ``scores`` (..., K)."""
    loss = canonical_loss(name)
    s, r, m = _as_float(scores, labels, mask)
    if loss == "mse":
        return Derivatives(m * (s - r), m)
    if loss == "bce":
        p = torch.sigmoid(s)
        return Derivatives(m * (p - r), m * p * (1 - p))
    w = pair_weights(r, m)
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)  # d_pn
    q = w * torch.sigmoid(-diff)  # -dS/dd_pn
    c = w * torch.sigmoid(diff) * torch.sigmoid(-diff)  # d2S/dd_pn^2
    grad = q.sum(-2) - q.sum(-1)
    curv = torch.diag_embed(c.sum(-1) + c.sum(-2)) - c - c.transpose(-1, -2)
    return Derivatives(grad, curv)


def derivatives(name: str, scores: Tensor, labels: Tensor, mask: Tensor) -> Derivatives:
    """Gradient and curvature of :func:`masked_loss` (the normalised per-task loss)."""
    return summed_derivatives(name, scores, labels, mask).scaled(loss_scale(name, labels, mask))


# --------------------------------------------------------------------------- ONNX


@dataclass(frozen=True)
class SupportLoss:
    """The loss of one task's support set in a graph: its name, the (S,) ratings and mask
    value names, and what does not change across inner steps: ``denom``, the normaliser
    (``masked_loss = summed_loss / denom``, times 2 for mse) and, for bpr, ``pairs``, the
    (S, S) pair weights."""

    loss: Loss
    ratings: str
    mask: str
    denom: str
    pairs: str | None = None


def emit_support_loss(g: GraphBuilder, name: str, ratings: str, mask: str) -> SupportLoss:
    """The step-invariant parts of the support loss ``name`` on (S,) ``ratings``/``mask``."""
    from onnx import TensorProto

    loss = canonical_loss(name)
    if loss != "bpr":
        denom = g.op("Max", g.op("ReduceSum", mask, keepdims=0), "one")
        return SupportLoss(loss, ratings, mask, denom)
    real = g.op("Cast", g.op("Greater", mask, "zero"), to=TensorProto.FLOAT)
    pos = g.op("Mul", g.op("Mul", mask, real),
               g.op("Cast", g.op("Greater", ratings, "zero"), to=TensorProto.FLOAT))
    neg = g.op("Mul", g.op("Mul", mask, real),
               g.op("Cast", g.op("Equal", ratings, "zero"), to=TensorProto.FLOAT))
    pairs = g.op("Mul", g.op("Unsqueeze", pos, "axis_one"), g.op("Unsqueeze", neg, "axis_zero"))
    total = g.op("ReduceSum", pairs, keepdims=0)
    denom = g.op("Where", g.op("Greater", total, "zero"), total, "one")
    return SupportLoss(loss, ratings, mask, denom, pairs)


def _emit_pair_diff(g: GraphBuilder, y: str) -> str:
    """(S, S) d_pn = y_p - y_n."""
    return g.op("Sub", g.op("Unsqueeze", y, "axis_one"), g.op("Unsqueeze", y, "axis_zero"))


def _emit_summed_grad(g: GraphBuilder, sl: SupportLoss, y: str) -> str:
    """(S,) dS/dy for bce and bpr (:func:`summed_derivatives`)."""
    if sl.loss == "bce":
        return g.op("Mul", sl.mask, g.op("Sub", g.op("Sigmoid", y), sl.ratings))
    assert sl.pairs is not None
    q = g.op("Mul", sl.pairs, g.op("Sigmoid", g.op("Neg", _emit_pair_diff(g, y))))
    return g.op("Sub", g.op("ReduceSum", q, "axis_zero", keepdims=0),
                g.op("ReduceSum", q, "axis_one", keepdims=0))


def emit_loss_grad(g: GraphBuilder, sl: SupportLoss, y: str) -> str:
    """(S,) d masked_loss / dy at the (S,) scores ``y`` (:func:`derivatives`' gradient)."""
    if sl.loss == "mse":  # 2 m (y - r) / max(sum m, 1), as the graph always computed it
        return g.op("Div", g.op("Mul", g.op("Mul", "two", sl.mask), g.op("Sub", y, sl.ratings)),
                    sl.denom)
    return g.op("Div", _emit_summed_grad(g, sl, y), sl.denom)


def emit_summed_derivatives(g: GraphBuilder, sl: SupportLoss, y: str) -> tuple[str, str, bool]:
    """dS/dy (S,) and the curvature of S at ``y``: (S,) diagonal (mse, bce; third value True)
    or (S, S) matrix (bpr; False) (:func:`summed_derivatives`)."""
    if sl.loss == "mse":
        return g.op("Mul", sl.mask, g.op("Sub", y, sl.ratings)), sl.mask, True
    if sl.loss == "bce":
        p = g.op("Sigmoid", y)
        curv = g.op("Mul", sl.mask, g.op("Mul", p, g.op("Sub", "one", p)))
        return _emit_summed_grad(g, sl, y), curv, True
    assert sl.pairs is not None
    diff = _emit_pair_diff(g, y)
    c = g.op("Mul", sl.pairs, g.op("Mul", g.op("Sigmoid", diff),
                                   g.op("Sigmoid", g.op("Neg", diff))))
    degree = g.op("Add", g.op("ReduceSum", c, "axis_one", keepdims=0),
                  g.op("ReduceSum", c, "axis_zero", keepdims=0))  # (S,)
    eye = g.op("EyeLike", c)
    curv = g.op("Sub", g.op("Mul", eye, g.op("Unsqueeze", degree, "axis_zero")),
                g.op("Add", c, g.op("Transpose", c, perm=[1, 0])))
    return _emit_summed_grad(g, sl, y), curv, False
