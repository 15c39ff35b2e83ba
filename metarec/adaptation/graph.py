"""The small ONNX graph builder the adaptation emitters write into (numpy + onnx only).

:class:`GraphBuilder` hands out unique value names and keeps nodes and initializers in order;
:class:`TaskGraph` is what an emitter sees of one task's graph: the decision weights and
lazily emitted tower features and score offsets of the support and candidate items (lazy, so
that a graph without adaptation holds no node reading the support inputs).

Graph inputs (see :mod:`metarec.export.runtime`): ``support_items`` (S,), ``support_ratings``
(S,), ``support_mask`` (S,) and ``candidate_items`` (C,). Shared constants: ``minus_one``,
``axis_zero``, ``axis_one`` (int64 [-1], [0], [1]), ``zero``, ``one``, ``two`` (float32
scalars), ``one_1x1`` (1, 1). Weights are transposed (``Wt = W.T``, (in, out)) so that every
product is a plain MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUPPORT, CANDIDATES = "support_items", "candidate_items"

Weights = tuple[tuple[str, str], ...]  # per decision layer: (Wt (in, out), b (out,)) names


class GraphBuilder:
    """A tiny builder: unique value names, nodes and initializers in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


@dataclass(frozen=True)
class TaskGraph:
    """One task's graph as the emitters see it.

    ``features(rows)``: (K, F) tower features of the items ``rows`` (``SUPPORT`` or
    ``CANDIDATES``: item rows in ``model.onnx``, item vectors in the catalog's user graph);
    ``offset(rows)``: (K,) score offsets, or None when the model has none; ``extra(rows)``:
    (K, f) item features the ridge head adds (the item factors of a ``head_factors`` model), or
    None when ``n_extra`` is 0; ``weights``: the meta-learned decision layers; ``n_hidden``:
    width H of the last hidden layer.
    """

    g: GraphBuilder
    weights: Weights
    n_hidden: int
    features: Callable[[str], str]
    offset: Callable[[str], str | None]
    extra: Callable[[str], str | None] = lambda rows: None
    n_extra: int = 0
