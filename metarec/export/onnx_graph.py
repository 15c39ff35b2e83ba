"""The two ONNX graphs of a model, built op by op with ``onnx.helper``.

- ``model.onnx``: one user's support ratings in, one score per candidate out, with the
  learner's adaptation computed inside the graph by the emitter of its kind
  (:mod:`metarec.adaptation.kinds`: gradient steps with the analytic backward, the closed-form
  ridge head, or none);
- ``scorer.onnx``: the same scores without adaptation (the meta-learned initial weights).

Inputs (item *rows*: ``metadata.json`` maps canonical item ids to rows and back)::

    user_cat        (Fu,) int64    encoded user fields (0 = unknown, see metarec.data.arrays)
    support_items   (S,)  int64    item rows of the rated items, S >= 0
    support_ratings (S,)  float32  their ratings (implicit losses bce/bpr: 0/1 labels)
    support_mask    (S,)  float32  a weight per slot: 1 for a real rating (or an implicit
                                   label's confidence), 0 for padding (all 0: no adaptation)
    candidate_items (C,)  int64    item rows to score
    -> scores       (C,)  float32  predicted ratings (bce/bpr: logits, higher = more likely)

The support loss (``adaptation.loss`` in metadata.json) is the learner's own: its gradient
drives the in-graph steps, its curvature the ridge Newton step (metarec.adaptation.losses).

The item tower runs once at export: its output for every item row is an initializer
``item_feats`` (I, Ei), so item features and language-model embeddings live inside the graph.
The user tower is a Gather into the stacked user embedding tables. Items with a residual
offset (``model.item_offset``) carry it as an initializer ``item_offset`` (I,); a model whose
ridge head reads the item factors (``model.head_factors``) carries them as ``item_fac`` (I, f).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from metarec.adaptation.graph import GraphBuilder, TaskGraph
from metarec.adaptation.kinds import KIND_FUNCTIONS
from metarec.adaptation.mlp import bias_name, emit_candidate_scores, weight_name
from metarec.adaptation.ridge import ITEM_FACTORS
from metarec.adaptation.spec import Adaptation
from metarec.export.runtime import ADAPT_INPUTS, SCORER_INPUTS
from metarec.models.estimator import Estimator

SHARED_CONSTANTS = (("minus_one", np.array([-1], np.int64)), ("axis_zero", np.array([0], np.int64)),
                    ("axis_one", np.array([1], np.int64)), ("zero", np.array(0.0, np.float32)),
                    ("one", np.array(1.0, np.float32)), ("two", np.array(2.0, np.float32)),
                    ("one_1x1", np.ones((1, 1), np.float32)))


def check_stackable(model: Estimator) -> None:
    """The user tower is one Gather: every user embedding must have the same width."""
    dims = {emb.embedding_dim for emb in model.user_emb}
    if len(dims) > 1:
        raise ValueError(f"user embeddings of different sizes {sorted(dims)} cannot be stacked")


@torch.no_grad()
def _user_tables(model: Estimator) -> tuple[np.ndarray, np.ndarray]:
    """Stacked user embedding tables (sum of cardinalities, E) and each field's row offset."""
    tables = [emb.weight.detach().float().cpu().numpy() for emb in model.user_emb]
    sizes = [t.shape[0] for t in tables]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else \
        np.zeros(0, np.int64)
    return np.concatenate(tables, axis=0).astype(np.float32), offsets


@torch.no_grad()
def _item_rows_const(model: Estimator) -> tuple[np.ndarray, np.ndarray | None]:
    """The item tower's output for every item row (I, Ei), and the score offsets (I,) or None."""
    rows = torch.arange(model.item_table.shape[0], device=model.item_table.device)
    offsets = model.offset(rows).float().cpu().numpy() if model.item_offset else None
    return model.item_embed(rows).float().cpu().numpy(), offsets


def decision_weights(g: GraphBuilder, model: Estimator) -> tuple[tuple[str, str], ...]:
    """The decision layers as initializers ``Wt_i`` (in, out) and ``b_i`` (out,)."""
    params = model.decision_params()
    return tuple(
        (g.const(f"Wt_{i}", params[weight_name(i)].detach().float().cpu().numpy().T.copy()),
         g.const(f"b_{i}", params[bias_name(i)].detach().float().cpu().numpy().copy()))
        for i in range(len(model.decision)))


def emit_user_vec(g: GraphBuilder, model: Estimator) -> str | None:
    """(1, Eu) user tower output of the input ``user_cat`` (one Gather into the stacked user
    tables), or None for a model without user fields; defines ``user_width`` [Eu]."""
    if not len(model.user_emb):
        return None
    table, user_offsets = _user_tables(model)
    g.const("user_emb", table)
    g.const("user_offsets", user_offsets)
    eu = table.shape[1] * len(user_offsets)
    g.const("user_width", np.array([eu], np.int64))
    rows = g.op("Add", "user_cat", "user_offsets")
    return g.op("Reshape", g.op("Gather", "user_emb", rows, axis=0),
                g.const("user_shape", np.array([1, eu], np.int64)))  # (1, Eu)


def _task_graph(g: GraphBuilder, model: Estimator) -> TaskGraph:
    """Initializers of the towers and decision layers, and the feature/offset emitters."""
    item_feats, offsets = _item_rows_const(model)
    g.const("item_feats", item_feats)
    for name, value in SHARED_CONSTANTS:
        g.const(name, value)
    user_vec = emit_user_vec(g, model)
    if offsets is not None:
        g.const("item_offset", offsets)
    n_extra = int(model.item_fac.shape[1]) if model.head_factors else 0
    if n_extra:  # the ridge head's extra features (metarec.adaptation.ridge)
        g.const(ITEM_FACTORS, model.item_fac.detach().float().cpu().numpy())
    weights = decision_weights(g, model)

    def features(items: str) -> str:
        """(K,) item rows -> (K, F) ``concat(item tower, user tower)`` (Estimator.embed's order)."""
        x = g.op("Gather", "item_feats", items, axis=0)  # (K, Ei)
        if user_vec is None:
            return x
        shape = g.op("Concat", g.op("Shape", items), "user_width", axis=0)  # [K, Eu]
        return g.op("Concat", x, g.op("Expand", user_vec, shape), axis=1)

    def offset(items: str) -> str | None:
        return None if offsets is None else g.op("Gather", "item_offset", items, axis=0)

    def extra(items: str) -> str | None:
        return g.op("Gather", ITEM_FACTORS, items, axis=0) if n_extra else None

    return TaskGraph(g, weights, int(model.decision[-1].in_features), features, offset, extra,
                     n_extra)


def build_graph(model: Estimator, adaptation: Adaptation | None, opset: int) -> onnx.ModelProto:
    """``model.onnx`` adapting by ``adaptation``, or ``scorer.onnx`` when it is None."""
    g = GraphBuilder()
    task = _task_graph(g, model)
    if adaptation is None:
        scores = emit_candidate_scores(task, task.weights)
    else:
        scores = KIND_FUNCTIONS[adaptation.kind].emit(task, adaptation)
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
    return _finish(g, model, adaptation is not None, opset)


def _finish(g: GraphBuilder, model: Estimator, adapt: bool, opset: int) -> onnx.ModelProto:
    """Inputs, outputs and checks around the nodes of ``g``."""
    fu = len(model.user_emb)
    vec = {"user_cat": ([fu], TensorProto.INT64), "support_items": (["S"], TensorProto.INT64),
           "support_ratings": (["S"], TensorProto.FLOAT), "support_mask": (["S"], TensorProto.FLOAT),
           "candidate_items": (["C"], TensorProto.INT64)}
    names = ADAPT_INPUTS if adapt else SCORER_INPUTS
    return finish_proto(g, "metarec_adapt" if adapt else "metarec_scorer",
                        [(n, vec[n][1], vec[n][0]) for n in names],
                        [("scores", TensorProto.FLOAT, ["C"])], opset)


Value = tuple[str, int, list]  # (name, TensorProto element type, shape: ints or dim names)


def finish_proto(g: GraphBuilder, name: str, inputs: list[Value], outputs: list[Value],
                 opset: int) -> onnx.ModelProto:
    """The checked model of ``g``'s nodes with these inputs and outputs (unused initializers
    pruned; IR version capped so that older runtimes read it too)."""
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="metarec")
    proto.ir_version = min(proto.ir_version, 10)  # readable by older runtimes too
    _prune(proto)  # constants no node reads (the scorer's, or those a kind does not use)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _prune(proto: onnx.ModelProto) -> None:
    """Remove initializers no node reads."""
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
