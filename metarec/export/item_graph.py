"""``item_encoder.onnx``: a new item's attributes and text embedding -> its catalog row.

The item tower of :class:`metarec.models.estimator.Estimator` for an item without training
ratings, which is what a new item is: its statistics are (0, 0) ("unknown"), so the statistics
projection contributes its bias and the score offset is 0; its id embedding is masked to zero;
its item factors are zeros (the factor projection contributes its bias, the ridge head's
features are zeros). Inputs (N items; index conventions of :mod:`metarec.data.arrays`)::

    item_cat          (N, Fi)  int64    encoded categorical/bucketed fields (only when Fi > 0)
    item_bag_<name>   (N, L)   int64    one attribute bag per multi-valued field, 0 = padding
    item_text         (N, D)   float32  language-model embeddings (only with a text feature)
    -> item_vecs (N, Ei), item_first (N, H0) = item_vecs @ Wt0[:Ei] (the item half of the
       first decision layer), item_offset (N,), item_head (N, f) (only when f > 0)

Bags of any width L are accepted (mean over the non-padding entries, as the tower pools).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from metarec.adaptation.graph import GraphBuilder
from metarec.export.onnx_graph import finish_proto
from metarec.export.user_graph import head_width, item_width
from metarec.models.estimator import Estimator

ENCODER_OUTPUTS = ("item_vecs", "item_first", "item_offset", "item_head")


def encoder_inputs(model: Estimator) -> list[str]:
    """The inputs of ``item_encoder.onnx``, in order."""
    cat = ["item_cat"] if model.item_table.shape[1] else []
    text = ["item_text"] if model.text_proj is not None else []
    return [*cat, *(f"item_bag_{n}" for n in model.multi_names), *text]


def encoder_outputs(model: Estimator) -> list[str]:
    return list(ENCODER_OUTPUTS if head_width(model) else ENCODER_OUTPUTS[:-1])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().copy()


def _rows_of(g: GraphBuilder, like: str, width: int, bias: torch.Tensor, name: str) -> str:
    """(N, width) rows all equal to ``bias``, N the rows of ``like``: a Linear of zeros."""
    shape = g.op("Concat", g.op("Shape", like, end=1),
                 g.const(f"{name}_width", np.array([width], np.int64)), axis=0)
    return g.op("Expand", g.const(f"{name}_bias", _np(bias).reshape(1, width)), shape)


@torch.no_grad()
def build_item_encoder(model: Estimator, opset: int) -> onnx.ModelProto:
    """``item_encoder.onnx`` of ``model`` (see the module docstring)."""
    g = GraphBuilder()
    g.const("axis_one", np.array([1], np.int64))
    g.const("one", np.array(1.0, np.float32))
    inputs = encoder_inputs(model)
    anchor = inputs[0] if inputs else None
    if anchor is None:
        raise ValueError("the item tower has no input (no item fields, bags or text): a new "
                         "item cannot be encoded")
    parts = []
    fi = int(model.item_table.shape[1])
    if fi:
        tables = [_np(e.weight) for e in model.item_emb]
        offsets = np.concatenate([[0], np.cumsum([t.shape[0] for t in tables])[:-1]])
        g.const("item_emb", np.concatenate(tables, 0))
        rows = g.op("Add", "item_cat", g.const("item_field_offsets", offsets.astype(np.int64)))
        width = sum(t.shape[1] for t in tables)
        parts.append(g.op("Reshape", g.op("Gather", "item_emb", rows, axis=0),
                          g.const("item_cat_shape", np.array([-1, width], np.int64))))
    for name in model.multi_names:
        bag = f"item_bag_{name}"
        vecs = g.op("Gather", g.const(f"bag_emb_{name}", _np(model.bag_emb[name].weight)), bag,
                    axis=0)  # (N, L, E)
        real = g.op("Cast", g.op("Not", g.op("Equal", bag, g.const(
            f"bag_pad_{name}", np.array(0, np.int64)))), to=TensorProto.FLOAT)  # (N, L)
        total = g.op("ReduceSum", g.op("Mul", vecs, g.op("Unsqueeze", real, g.const(
            f"bag_axis_{name}", np.array([2], np.int64)))), "axis_one", keepdims=0)  # (N, E)
        count = g.op("Max", g.op("ReduceSum", real, "axis_one", keepdims=1), "one")  # (N, 1)
        parts.append(g.op("Div", total, count))
    if model.text_proj is not None:
        parts.append(g.op("Add", g.op("MatMul", "item_text", g.const(
            "text_wt", _np(model.text_proj.weight).T.copy())), g.const(
            "text_b", _np(model.text_proj.bias))))
    if model.stats_proj is not None:  # statistics (0, 0): the projection's bias
        parts.append(_rows_of(g, anchor, model.stats_proj.out_features, model.stats_proj.bias,
                              "stats"))
    if model.fac_proj is not None:  # item factors 0: the projection's bias
        parts.append(_rows_of(g, anchor, model.fac_proj.out_features, model.fac_proj.bias,
                              "fac"))
    if model.id_emb is not None:  # no training ratings: the id embedding is masked out
        parts.append(_rows_of(g, anchor, model.id_emb.embedding_dim,
                              torch.zeros(model.id_emb.embedding_dim), "id"))
    vecs = g.op("Concat", *parts, axis=1) if len(parts) > 1 else parts[0]
    if model.item_norm is not None:
        norm = model.item_norm
        vecs = g.op("LayerNormalization", vecs, g.const("norm_scale", _np(norm.weight)),
                    g.const("norm_bias", _np(norm.bias)), axis=-1, epsilon=float(norm.eps))
    ei, f = item_width(model), head_width(model)
    w0 = _np(model.decision[0].weight).T[:ei].copy()  # (Ei, H0)
    outputs = {"item_vecs": vecs,
               "item_first": g.op("MatMul", vecs, g.const("first_item_wt", w0)),
               "item_offset": g.op("ConstantOfShape", g.op("Shape", anchor, end=1)),
               "item_head": _rows_of(g, anchor, f, torch.zeros(f), "head") if f else ""}
    names = encoder_outputs(model)
    for n in names:
        g.nodes.append(helper.make_node("Identity", [outputs[n]], [n]))
    shapes = {"item_cat": (TensorProto.INT64, ["N", fi]),
              "item_text": (TensorProto.FLOAT, ["N", int(model.item_text.shape[1])]
                            if model.item_text is not None else ["N", 0])}
    shapes.update({f"item_bag_{n}": (TensorProto.INT64, ["N", f"L_{n}"])
                   for n in model.multi_names})
    out_shapes = {"item_vecs": ["N", ei], "item_first": ["N", w0.shape[1]],
                  "item_offset": ["N"], "item_head": ["N", f]}
    return finish_proto(g, "metarec_item_encoder",
                        [(n, *shapes[n]) for n in inputs],
                        [(n, TensorProto.FLOAT, out_shapes[n]) for n in names], opset)


@torch.no_grad()
def catalog_rows(model: Estimator, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The catalog rows of the model's own item rows (PyTorch, with their training statistics,
    id embeddings and factors): ``vectors`` (K, Ei), ``first`` (K, H0), ``offset`` (K,) and
    ``head`` (K, f), as :func:`build_item_encoder` gives them for a new item."""
    idx = torch.as_tensor(np.asarray(rows, np.int64), device=model.item_table.device)
    vecs = model.item_embed(idx).float()
    ei = item_width(model)
    first = vecs @ model.decision[0].weight[:, :ei].float().T
    head = (model.item_fac[idx].float() if head_width(model)
            else vecs.new_zeros(len(idx), 0))
    return {"vectors": _np(vecs), "first": _np(first), "offset": _np(model.offset(idx).float()),
            "head": _np(head)}
