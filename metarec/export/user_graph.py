"""The catalog's two user-side graphs: ``user.onnx`` adapts, ``score.onnx`` scores candidates.

Nothing item-specific is baked into them: items come in as their catalog rows (the item
tower's vector, the item half of the first decision layer, the score offset, the ridge head's
features; :mod:`metarec.export.item_graph` makes them for new items), so a catalog can grow
without a new export.

``user.onnx`` (the learner's adaptation, emitted by :mod:`metarec.adaptation.kinds`)::

    user_cat        (Fu,)    int64    encoded user fields
    support_vecs    (S, Ei)  float32  catalog vectors of the rated items
    support_offset  (S,)     float32  their score offsets
    support_head    (S, f)   float32  their head features (only when f > 0)
    support_ratings (S,), support_mask (S,)  float32
    -> user_first (H0,): the user half of the first decision layer plus its bias,
       head (H + f + 1,): the output layer over [last hidden layer, head features, 1],
       layer_<i>_wt / layer_<i>_b: the middle decision layers (adapted or not), and, for the
       gradient kind (every decision layer adapts), first_item (Ei, H0): the item half of the
       adapted first layer.

``score.onnx`` (one chunk of candidates, any number of rows)::

    candidate_first (C, H0)  the catalog's precomputed item half of the first layer
                             (gradient kind instead: candidate_vecs (C, Ei) times first_item)
    candidate_offset (C,), candidate_head (C, f) when f > 0, and the state above
    -> scores (C,) = offset + [relu(... relu(first + user_first) ...), head feats, 1] . head

The first decision layer on ``concat(item, user)`` splits into ``item @ Wt0[:Ei] + user @
Wt0[Ei:] + b0``; for the ridge and "none" kinds ``Wt0`` is the meta-learned one, so the item
half is precomputed once per item in the catalog and a request adds its user half to it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from metarec.adaptation.graph import CANDIDATES, SUPPORT, GraphBuilder, TaskGraph
from metarec.adaptation.kinds import KIND_FUNCTIONS
from metarec.adaptation.mlp import emit_layers
from metarec.adaptation.spec import Adaptation
from metarec.export.onnx_graph import (SHARED_CONSTANTS, decision_weights, emit_user_vec,
                                       finish_proto)
from metarec.models.estimator import Estimator


def item_width(model: Estimator) -> int:
    """Ei: the width of the item tower's output (the catalog's item vectors)."""
    return int(model.feature_dim - sum(e.embedding_dim for e in model.user_emb))


def head_width(model: Estimator) -> int:
    """f: the ridge head's item features per item (the item factors of a head_factors model)."""
    return int(model.item_fac.shape[1]) if model.head_factors else 0


def adapts_first_layer(adaptation: Adaptation) -> bool:
    """Whether the first decision layer adapts (gradient kind: its item half is per user)."""
    return adaptation.kind == "gradient" and adaptation.steps > 0


def state_names(model: Estimator, adaptation: Adaptation) -> list[str]:
    """The outputs of ``user.onnx`` = the state inputs of ``score.onnx``, in order: with the
    middle layers always (adapted or not), a user's state alone determines the scores."""
    names = ["user_first", "head"]
    if adapts_first_layer(adaptation):
        names.append("first_item")
    return names + [f"layer_{i}_{k}" for i in range(1, len(model.decision) - 1)
                    for k in ("wt", "b")]


def _vector_task(g: GraphBuilder, model: Estimator) -> tuple[TaskGraph, str | None]:
    """The task graph over the support inputs, and the (1, Eu) user vector."""
    for name, value in SHARED_CONSTANTS:
        g.const(name, value)
    user_vec = emit_user_vec(g, model)
    weights = decision_weights(g, model)
    f = head_width(model)
    vecs = {SUPPORT: "support_vecs", CANDIDATES: "candidate_vecs"}

    def features(rows: str) -> str:
        x = vecs[rows]
        if user_vec is None:
            return x
        shape = g.op("Concat", g.op("Shape", x, end=1), "user_width", axis=0)  # [K, Eu]
        return g.op("Concat", x, g.op("Expand", user_vec, shape), axis=1)

    def offset(rows: str) -> str:
        return vecs[rows].replace("_vecs", "_offset")

    def extra(rows: str) -> str | None:
        return vecs[rows].replace("_vecs", "_head") if f else None

    task = TaskGraph(g, weights, int(model.decision[-1].in_features), features, offset, extra, f)
    return task, user_vec


def build_user_graph(model: Estimator, adaptation: Adaptation, opset: int) -> onnx.ModelProto:
    """``user.onnx``: the support rows' catalog vectors and ratings -> the adapted state."""
    g = GraphBuilder()
    task, user_vec = _vector_task(g, model)
    weights, head = KIND_FUNCTIONS[adaptation.kind].emit_state(task, adaptation)
    ei, h0 = item_width(model), int(model.decision[0].out_features)
    wt0, b0 = weights[0]
    split = g.const("first_split", np.array([ei], np.int64))
    end = g.const("first_end", np.array([model.feature_dim], np.int64))
    outputs = {}
    if user_vec is None:
        outputs["user_first"] = b0
    else:
        user_half = g.op("Slice", wt0, split, end, "axis_zero")  # (Eu, H0)
        outputs["user_first"] = g.op("Add", g.op("Reshape", g.op("MatMul", user_vec, user_half),
                                                 "minus_one"), b0)
    if head is None:  # the output layer is the head: [Wt_last; zeros (f); b_last]
        wt_last, b_last = weights[-1]
        zeros = [g.const("head_zeros", np.zeros((task.n_extra, 1), np.float32))] \
            if task.n_extra else []
        head = g.op("Concat", wt_last, *zeros, g.op("Unsqueeze", b_last, "axis_zero"), axis=0)
    outputs["head"] = g.op("Reshape", head, "minus_one")
    if adapts_first_layer(adaptation):
        start = g.const("first_start", np.array([0], np.int64))
        outputs["first_item"] = g.op("Slice", wt0, start, split, "axis_zero")  # (Ei, H0)
    for i in range(1, len(weights) - 1):
        outputs[f"layer_{i}_wt"], outputs[f"layer_{i}_b"] = weights[i]
    names = state_names(model, adaptation)
    for name in names:
        g.nodes.append(helper.make_node("Identity", [outputs[name]], [name]))
    f = task.n_extra
    inputs = [("user_cat", TensorProto.INT64, [len(model.user_emb)]),
              ("support_vecs", TensorProto.FLOAT, ["S", ei]),
              ("support_offset", TensorProto.FLOAT, ["S"])]
    inputs += [("support_head", TensorProto.FLOAT, ["S", f])] if f else []
    inputs += [("support_ratings", TensorProto.FLOAT, ["S"]),
               ("support_mask", TensorProto.FLOAT, ["S"])]
    shapes = _state_shapes(model, ei, h0, f)
    outs = [(n, TensorProto.FLOAT, shapes[n]) for n in names]
    return finish_proto(g, "metarec_user", inputs, outs, opset)


def _state_shapes(model: Estimator, ei: int, h0: int, f: int) -> dict[str, list[int]]:
    shapes = {"user_first": [h0], "head": [int(model.decision[-1].in_features) + f + 1],
              "first_item": [ei, h0]}
    for i in range(1, len(model.decision) - 1):
        layer = model.decision[i]
        shapes[f"layer_{i}_wt"] = [int(layer.in_features), int(layer.out_features)]
        shapes[f"layer_{i}_b"] = [int(layer.out_features)]
    return shapes


def score_inputs(model: Estimator, adaptation: Adaptation) -> list[str]:
    """The inputs of ``score.onnx``, in order: candidate rows, then the state."""
    first = ["candidate_vecs"] if adapts_first_layer(adaptation) else ["candidate_first"]
    head = ["candidate_head"] if head_width(model) else []
    return [*first, "candidate_offset", *head, *state_names(model, adaptation)]


def build_score_graph(model: Estimator, adaptation: Adaptation, opset: int) -> onnx.ModelProto:
    """``score.onnx``: a chunk of candidates' catalog rows and a user's state -> (C,) scores."""
    g = GraphBuilder()
    for name, value in SHARED_CONSTANTS:
        g.const(name, value)
    ei, h0, f = item_width(model), int(model.decision[0].out_features), head_width(model)
    hidden = int(model.decision[-1].in_features)
    middle = tuple((f"layer_{i}_wt", f"layer_{i}_b") for i in range(1, len(model.decision) - 1))
    first = (g.op("MatMul", "candidate_vecs", "first_item")  # (C, H0)
             if adapts_first_layer(adaptation) else "candidate_first")
    h = g.op("Relu", g.op("Add", first, "user_first"))  # (C, H0)
    if middle:
        h = emit_layers(g, h, middle, relu_last=True).out  # (C, H)
    cuts = [g.const(f"head_cut_{i}", np.array([v], np.int64))
            for i, v in enumerate((0, hidden, hidden + f, hidden + f + 1))]
    w_h = g.op("Slice", "head", cuts[0], cuts[1])  # (H,)
    score = g.op("MatMul", h, w_h)  # (C,)
    if f:
        score = g.op("Add", score, g.op("MatMul", "candidate_head",
                                        g.op("Slice", "head", cuts[1], cuts[2])))
    bias = g.op("Slice", "head", cuts[2], cuts[3])  # (1,)
    score = g.op("Add", g.op("Add", score, bias), "candidate_offset")
    g.nodes.append(helper.make_node("Identity", [score], ["scores"]))
    shapes = {"candidate_vecs": ["C", ei], "candidate_first": ["C", h0],
              "candidate_offset": ["C"], "candidate_head": ["C", f],
              **_state_shapes(model, ei, h0, f)}
    inputs = [(n, TensorProto.FLOAT, shapes[n]) for n in score_inputs(model, adaptation)]
    return finish_proto(g, "metarec_score", inputs, [("scores", TensorProto.FLOAT, ["C"])],
                        opset)
