"""The decision MLP's forward, defined once, and the "none" kind (no adaptation).

``Linear -> ReLU -> ... -> Linear(1)`` from an explicit parameter dict keyed by state_dict names
(``decision.{i}.weight`` (out, in), ``decision.{i}.bias`` (out,)), written out layer by layer
(``h @ W.T + b``) so that its backward can be written analytically in the ONNX graph
(:mod:`metarec.adaptation.gradient`). :meth:`metarec.models.estimator.Estimator.decide`, the
inner loop, the ridge head and the graph builder all go through the functions here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from metarec.adaptation.graph import GraphBuilder, TaskGraph, Weights
    from metarec.adaptation.spec import Adaptation

DECISION_PREFIX = "decision."


def weight_name(i: int) -> str:
    return f"{DECISION_PREFIX}{i}.weight"


def bias_name(i: int) -> str:
    return f"{DECISION_PREFIX}{i}.bias"


# --------------------------------------------------------------------------- PyTorch


def hidden(params: Mapping[str, Tensor], x: Tensor, n_layers: int) -> Tensor:
    """The last hidden layer: (..., K, F) -> (..., K, H) (all but the output layer)."""
    h = x
    for i in range(n_layers - 1):
        h = torch.relu(h @ params[weight_name(i)].T + params[bias_name(i)])
    return h


def scores(params: Mapping[str, Tensor], x: Tensor, n_layers: int) -> Tensor:
    """The MLP's output: (..., K, F) -> (..., K) scores (no ReLU after the output layer)."""
    last = n_layers - 1
    h = hidden(params, x, n_layers)
    return (h @ params[weight_name(last)].T + params[bias_name(last)]).squeeze(-1)


def unadapted_scores(model: nn.Module, adaptation: Adaptation, user_cat: Tensor,
                     items: Tensor, ratings: Tensor, mask: Tensor, candidates: Tensor) -> Tensor:
    """The "none" kind for one task: the model's scores, support ignored -> (C,)."""
    with torch.no_grad():
        return model(user_cat, candidates)


# --------------------------------------------------------------------------- ONNX


class Trace(NamedTuple):
    """What :func:`emit_layers` produced: the output, pre-activations z_i, layer inputs h_{i-1}."""

    out: str
    zs: list[str]
    hs: list[str]


def emit_layers(g: GraphBuilder, x: str, weights: Weights, *, relu_last: bool) -> Trace:
    """Layers ``weights`` on (K, in): ``h @ Wt + b``, ReLU between them (and after the last one
    when ``relu_last``): the ONNX twin of :func:`hidden` / :func:`scores`."""
    h, zs, hs = x, [], []
    for i, (wt, b) in enumerate(weights):
        hs.append(h)
        z = g.op("Add", g.op("MatMul", h, wt), b)
        zs.append(z)
        h = g.op("Relu", z) if relu_last or i < len(weights) - 1 else z
    return Trace(h, zs, hs)


def emit_scores(g: GraphBuilder, x: str, weights: Weights) -> Trace:
    """Decision MLP: (K, F) -> Trace with ``out`` the (K,) scores (:func:`scores`)."""
    trace = emit_layers(g, x, weights, relu_last=False)
    return trace._replace(out=g.op("Reshape", trace.out, "minus_one"))


def emit_hidden(g: GraphBuilder, x: str, weights: Weights) -> str:
    """(K, F) -> (K, H) last hidden layer (:func:`hidden`)."""
    return emit_layers(g, x, weights[:-1], relu_last=True).out


def emit_candidate_scores(task: TaskGraph, weights: Weights) -> str:
    """(C,) candidate scores under ``weights``, plus the item offsets when the model has them."""
    out = emit_scores(task.g, task.features("candidate_items"), weights).out
    offset = task.offset("candidate_items")
    return out if offset is None else task.g.op("Add", out, offset)


def emit_unadapted(task: TaskGraph, adaptation: Adaptation) -> str:
    """The "none" kind: candidate scores under the meta-learned weights."""
    return emit_candidate_scores(task, task.weights)


def unadapted_state(task: TaskGraph, adaptation: Adaptation) -> tuple[Weights, str | None]:
    """The "none" kind's state: the meta-learned decision layers, no separate head."""
    return task.weights, None
