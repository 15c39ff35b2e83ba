"""Kind -> (PyTorch reference, ONNX emitter): the one dispatch on ``Adaptation.kind``.

Both functions of a kind compute the same thing for one task: the reference is what export
parity and tests compare the graph with, the emitter writes it into the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from metarec.adaptation import gradient, mlp, ridge
from metarec.adaptation.graph import TaskGraph, Weights
from metarec.adaptation.spec import Adaptation, Kind


@dataclass(frozen=True)
class KindFunctions:
    """``reference(model, adaptation, user_cat (Fu,), items (S,), ratings (S,), mask (S,),
    candidates (C,)) -> (C,)`` scores; ``emit(task_graph, adaptation) -> scores`` value name;
    ``emit_state(task_graph, adaptation) -> (weights, head)``: the adapted decision layers and
    the adapted (H + f + 1, 1) output head, or None when the last layer of ``weights`` is the
    head (what the catalog's user graph hands its candidate scorer)."""

    reference: Callable[..., Tensor]
    emit: Callable[[TaskGraph, Adaptation], str]
    emit_state: Callable[[TaskGraph, Adaptation], tuple[Weights, str | None]]


KIND_FUNCTIONS: dict[Kind, KindFunctions] = {
    "gradient": KindFunctions(gradient.reference_scores, gradient.emit, gradient.emit_state),
    "ridge": KindFunctions(ridge.reference_scores, ridge.emit, ridge.emit_state),
    "none": KindFunctions(mlp.unadapted_scores, mlp.emit_unadapted, mlp.unadapted_state),
}


def adapted_scores(model: nn.Module, adaptation: Adaptation, user_cat: Tensor, items: Tensor,
                   ratings: Tensor, mask: Tensor, candidates: Tensor) -> Tensor:
    """Scores of ``candidates`` after ``adaptation`` on one task's support set (PyTorch).

    Shapes: user_cat (Fu,), items/ratings/mask (S,), candidates (C,) -> (C,), detached. This is
    what the learner's ``predict`` computes for that task.
    """
    fn = KIND_FUNCTIONS[adaptation.kind].reference
    return fn(model, adaptation, user_cat, items, ratings, mask, candidates).detach()
