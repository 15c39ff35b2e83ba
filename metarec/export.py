"""ONNX export with the inner loop inside the graph, and its parity check against PyTorch.

Two graphs per model, built op by op with ``onnx.helper`` (autograd does not export, so the
backward of the decision MLP is written out analytically):

- ``model.onnx``: one user's support ratings in, one score per candidate out, with
  ``meta.inner_steps`` gradient steps of :func:`metarec.meta.inner.adapt` on the masked MSE
  over the decision MLP computed inside the graph (MeLU mode: the towers are not adapted);
- ``scorer.onnx``: the same scores without adaptation (the meta-learned initial weights).

Inputs (item *rows*: ``metadata.json`` maps canonical item ids to rows and back)::

    user_cat        (Fu,) int64    encoded user fields (0 = unknown, see metarec.data.arrays)
    support_items   (S,)  int64    item rows of the rated items, S >= 0
    support_ratings (S,)  float32  their ratings
    support_mask    (S,)  float32  1 for a real rating, 0 for padding (all 0: no adaptation)
    candidate_items (C,)  int64    item rows to score
    -> scores       (C,)  float32  predicted ratings

The item tower runs once at export: its output for every item row is an initializer
``item_feats`` (I, Ei), so item features and language-model embeddings live inside the graph.
The user tower is a Gather into the stacked user embedding tables.

Inner step (L = sum(m (y - r)^2) / max(sum m, 1), the loss of ``masked_mse``)::

    dL/dy = 2 m (y - r) / max(sum m, 1)                  (S,)
    g_n = dL/dy[:, None];  dWt_i = h_{i-1}^T g_i;  db_i = sum_rows g_i
    g_{i-1} = (g_i Wt_i^T) * [z_{i-1} > 0]               (ReLU backward, as torch's)
    Wt_i <- Wt_i - lr_i dWt_i;  b_i <- b_i - lr_i db_i   (lr_i: scalar, or Meta-SGD's rates)

Weights are kept transposed (``Wt = W.T``, (in, out)) so every product is a plain MatMul.

The ``ridge`` learner adapts the output layer in closed form instead
(:func:`metarec.meta.inner.ridge_head`); its (H+1)x(H+1) ridge system is solved inside the graph
with matrix products only: Newton-Schulz iterations for the inverse from ``I / ||A||_F`` and
two steps of iterative refinement (``_ridge_scores``). Items with a residual offset
(``model.item_offset``) carry it as an initializer ``item_offset`` (I,) in both kinds of graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from metarec.config import MetaConfig
from metarec.data.arrays import FeatureArrays
from metarec.io import atomic_dir, write_json
from metarec.models.estimator import DECISION_PREFIX, Estimator

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SCORER_FILE = "scorer.onnx"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18
RIDGE_ITERATIONS = 40  # Newton-Schulz steps for the ridge learner's inverse (see _ridge_scores)
RIDGE_REFINEMENTS = 2
ADAPT_INPUTS = ("user_cat", "support_items", "support_ratings", "support_mask", "candidate_items")
SCORER_INPUTS = ("user_cat", "candidate_items")


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: the directory and its three files, plus the metadata written."""

    out_dir: Path
    model_path: Path
    scorer_path: Path
    metadata_path: Path
    metadata: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime against PyTorch ``adapt`` + score on random tasks (rating units)."""

    max_abs_err: float  # adapted graph (model.onnx) against adapt + decide
    scorer_max_abs_err: float  # scorer.onnx against the unadapted model
    tol: float
    n_tasks: int
    support_sizes: tuple[int, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_err": self.max_abs_err, "scorer_max_abs_err": self.scorer_max_abs_err,
                "tol": self.tol, "n_tasks": self.n_tasks,
                "support_sizes": list(self.support_sizes), "passed": self.passed}


# --------------------------------------------------------------------------- weights


def _check_exportable(model: Estimator, meta_cfg: MetaConfig) -> None:
    if meta_cfg.inner_steps < 0:
        raise ValueError(f"meta.inner_steps must be >= 0, got {meta_cfg.inner_steps}")
    if meta_cfg.learner not in ("melu", "ridge") and meta_cfg.adapted != "decision":
        raise ValueError(
            f"ONNX export supports adaptation of the decision MLP only (MeLU mode); "
            f"meta.adapted is {meta_cfg.adapted!r} for learner {meta_cfg.learner!r}")
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
def _item_feats(model: Estimator) -> np.ndarray:
    """The item tower's output for every item row: (I, Ei) float32."""
    rows = torch.arange(model.item_table.shape[0], device=model.item_table.device)
    return model.item_embed(rows).float().cpu().numpy()


def _decision(model: Estimator, per_param_lr: Mapping[str, torch.Tensor] | None,
              lr: float) -> list[dict[str, np.ndarray]]:
    """Per decision layer: Wt (in, out), b (out,), and their rates (scalars or same shapes)."""
    out = []
    params = model.decision_params()
    for i in range(len(model.decision)):
        w_name, b_name = f"{DECISION_PREFIX}{i}.weight", f"{DECISION_PREFIX}{i}.bias"
        layer = {"Wt": params[w_name].detach().float().cpu().numpy().T.copy(),
                 "b": params[b_name].detach().float().cpu().numpy().copy()}
        if per_param_lr is None:
            layer["lr_Wt"] = np.array(lr, np.float32)
            layer["lr_b"] = np.array(lr, np.float32)
        else:
            missing = [n for n in (w_name, b_name) if n not in per_param_lr]
            if missing:
                raise ValueError(f"per_param_lr lacks rates for {missing}")
            layer["lr_Wt"] = per_param_lr[w_name].detach().float().cpu().numpy().T.copy()
            layer["lr_b"] = per_param_lr[b_name].detach().float().cpu().numpy().copy()
        out.append(layer)
    return out


# --------------------------------------------------------------------------- graph


class _Graph:
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


def _features(g: _Graph, items: str, user_vec: str | None, eu: int) -> str:
    """(K,) item rows -> (K, F) ``concat(item tower, user tower)`` (Estimator.embed's order)."""
    x = g.op("Gather", "item_feats", items, axis=0)  # (K, Ei)
    if user_vec is None:
        return x
    rows = g.op("Shape", items)  # [K]
    shape = g.op("Concat", rows, "user_width", axis=0)
    u = g.op("Expand", user_vec, shape)  # (K, Eu)
    return g.op("Concat", x, u, axis=1)


def _forward(g: _Graph, x: str, weights: list[tuple[str, str]]) -> tuple[str, list[str], list[str]]:
    """Decision MLP: (K, F) -> ((K,) scores, pre-activations z_i, layer inputs h_{i-1})."""
    h, zs, hs = x, [], []
    for i, (wt, b) in enumerate(weights):
        hs.append(h)
        z = g.op("Add", g.op("MatMul", h, wt), b)
        zs.append(z)
        h = g.op("Relu", z) if i < len(weights) - 1 else z
    return g.op("Reshape", h, "minus_one"), zs, hs


def _inner_step(g: _Graph, x: str, ratings: str, mask: str, denom: str,
                weights: list[tuple[str, str]], rates: list[tuple[str, str]],
                offset: str | None = None) -> list[tuple[str, str]]:
    """One gradient step on the masked MSE of the support set; returns the new weights.

    ``offset``: (S,) per-item score offsets added to the MLP output (Estimator.offset); they
    change the residual, not the derivative of the score with respect to the weights.
    """
    y, zs, hs = _forward(g, x, weights)
    if offset is not None:
        y = g.op("Add", y, offset)
    dy = g.op("Div", g.op("Mul", g.op("Mul", "two", mask), g.op("Sub", y, ratings)), denom)
    grad = g.op("Unsqueeze", dy, "axis_one")  # (S, 1)
    new: list[tuple[str, str]] = [None] * len(weights)  # type: ignore[list-item]
    for i in reversed(range(len(weights))):
        wt, b = weights[i]
        d_wt = g.op("MatMul", g.op("Transpose", hs[i], perm=[1, 0]), grad)  # (in, out)
        d_b = g.op("ReduceSum", grad, "axis_zero", keepdims=0)  # (out,)
        if i > 0:
            back = g.op("MatMul", grad, g.op("Transpose", wt, perm=[1, 0]))  # (S, in)
            relu_mask = g.op("Cast", g.op("Greater", zs[i - 1], "zero"), to=TensorProto.FLOAT)
            grad = g.op("Mul", back, relu_mask)
        new[i] = (g.op("Sub", wt, g.op("Mul", rates[i][0], d_wt)),
                  g.op("Sub", b, g.op("Mul", rates[i][1], d_b)))
    return new


def _hidden(g: _Graph, x: str, weights: list[tuple[str, str]], rows: str) -> str:
    """Last hidden layer plus a constant-1 column: (K, F) -> (K, H + 1) (inner.hidden_features)."""
    h = x
    for wt, b in weights[:-1]:
        h = g.op("Relu", g.op("Add", g.op("MatMul", h, wt), b))
    ones = g.op("Expand", "one_1x1", g.op("Concat", g.op("Shape", rows), "axis_one", axis=0))
    return g.op("Concat", h, ones, axis=1)


def _ridge_scores(g: _Graph, x_support: str, x_cand: str, weights: list[tuple[str, str]],
                  offsets: str | None, lam: np.ndarray) -> str:
    """:func:`metarec.meta.inner.ridge_head` for one task, with standard ONNX ops only.

    The (H+1)x(H+1) system is solved by Newton-Schulz iterations for the inverse
    (X <- X (2I - A X) from X = I / ||A||_F, which converges for symmetric positive definite A)
    followed by iterative refinement of the solution; ``RIDGE_ITERATIONS`` covers condition
    numbers beyond 1e6 in float32.
    """
    k = lam.shape[0]
    g.const("ridge_lam", np.diag(lam.astype(np.float32)))
    g.const("ridge_eye2", (2.0 * np.eye(k)).astype(np.float32))
    wt_out, b_out = weights[-1]
    w0 = g.op("Concat", wt_out, g.op("Unsqueeze", b_out, "axis_zero"), axis=0)  # (H1, 1)
    hs = _hidden(g, x_support, weights, "support_items")  # (S, H1)
    hq = _hidden(g, x_cand, weights, "candidate_items")  # (C, H1)
    base_s = g.op("Reshape", g.op("MatMul", hs, w0), "minus_one")  # (S,)
    if offsets is not None:
        base_s = g.op("Add", base_s, g.op("Gather", offsets, "support_items", axis=0))
    resid = g.op("Mul", g.op("Sub", "support_ratings", base_s), "support_mask")  # (S,)
    hm = g.op("Mul", hs, g.op("Unsqueeze", "support_mask", "axis_one"))  # (S, H1)
    hmt = g.op("Transpose", hm, perm=[1, 0])
    a = g.op("Add", g.op("MatMul", hmt, hs), "ridge_lam")  # (H1, H1)
    b = g.op("MatMul", hmt, g.op("Unsqueeze", resid, "axis_one"))  # (H1, 1)
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", a, a), keepdims=0))
    x = g.op("Div", g.const("ridge_eye", np.eye(k, dtype=np.float32)), norm)
    for _ in range(RIDGE_ITERATIONS):
        x = g.op("MatMul", x, g.op("Sub", "ridge_eye2", g.op("MatMul", a, x)))
    dw = g.op("MatMul", x, b)
    for _ in range(RIDGE_REFINEMENTS):
        dw = g.op("Add", dw, g.op("MatMul", x, g.op("Sub", b, g.op("MatMul", a, dw))))
    scores = g.op("Reshape", g.op("MatMul", hq, g.op("Add", w0, dw)), "minus_one")  # (C,)
    if offsets is not None:
        scores = g.op("Add", scores, g.op("Gather", offsets, "candidate_items", axis=0))
    return scores


def _build(model: Estimator, meta_cfg: MetaConfig, adapt: bool, opset: int,
           per_param_lr: Mapping[str, torch.Tensor] | None,
           ridge_lambda: torch.Tensor | None = None) -> onnx.ModelProto:
    g = _Graph()
    g.const("item_feats", _item_feats(model))
    for name, value in (("minus_one", np.array([-1], np.int64)),
                        ("axis_zero", np.array([0], np.int64)),
                        ("axis_one", np.array([1], np.int64)),
                        ("zero", np.array(0.0, np.float32)), ("one", np.array(1.0, np.float32)),
                        ("two", np.array(2.0, np.float32)),
                        ("one_1x1", np.ones((1, 1), np.float32))):
        g.const(name, value)
    user_vec, eu = None, 0
    if len(model.user_emb):
        table, offsets = _user_tables(model)
        g.const("user_emb", table)
        g.const("user_offsets", offsets)
        eu = table.shape[1] * len(offsets)
        g.const("user_width", np.array([eu], np.int64))
        rows = g.op("Add", "user_cat", "user_offsets")
        user_vec = g.op("Reshape", g.op("Gather", "user_emb", rows, axis=0),
                        g.const("user_shape", np.array([1, eu], np.int64)))  # (1, Eu)
    offsets = None
    if model.item_offset:
        rows = torch.arange(model.item_table.shape[0], device=model.item_table.device)
        offsets = g.const("item_offset", model.offset(rows).detach().float().cpu().numpy())
    layers = _decision(model, per_param_lr, meta_cfg.inner_lr)
    weights = [(g.const(f"Wt_{i}", l["Wt"]), g.const(f"b_{i}", l["b"])) for i, l in enumerate(layers)]
    if adapt and ridge_lambda is not None:
        lam = ridge_lambda.detach().float().cpu().numpy()
        if lam.shape != (weights_width(model) + 1,) or not np.all(lam > 0):
            raise ValueError(f"ridge_lambda must hold {weights_width(model) + 1} positive values")
        scores = _ridge_scores(g, _features(g, "support_items", user_vec, eu),
                               _features(g, "candidate_items", user_vec, eu), weights, offsets, lam)
        g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
        return _finish(g, model, adapt, opset)
    if adapt and meta_cfg.inner_steps > 0:
        rates = [(g.const(f"lr_Wt_{i}", l["lr_Wt"]), g.const(f"lr_b_{i}", l["lr_b"]))
                 for i, l in enumerate(layers)]
        x_support = _features(g, "support_items", user_vec, eu)  # (S, F), fixed across steps
        denom = g.op("Max", g.op("ReduceSum", "support_mask", keepdims=0), "one")
        s_off = None if offsets is None else g.op("Gather", offsets, "support_items", axis=0)
        for _ in range(meta_cfg.inner_steps):
            weights = _inner_step(g, x_support, "support_ratings", "support_mask", denom,
                                  weights, rates, s_off)
    scores, _, _ = _forward(g, _features(g, "candidate_items", user_vec, eu), weights)
    if offsets is not None:
        scores = g.op("Add", scores, g.op("Gather", offsets, "candidate_items", axis=0))
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"]))
    return _finish(g, model, adapt, opset)


def weights_width(model: Estimator) -> int:
    """Width of the decision MLP's last hidden layer (the output layer's input)."""
    return int(model.decision[-1].in_features)


def _finish(g: _Graph, model: Estimator, adapt: bool, opset: int) -> onnx.ModelProto:
    """Inputs, outputs and checks around the nodes of ``g``."""
    fu = len(model.user_emb)
    vec = {"user_cat": ([fu], TensorProto.INT64), "support_items": (["S"], TensorProto.INT64),
           "support_ratings": (["S"], TensorProto.FLOAT), "support_mask": (["S"], TensorProto.FLOAT),
           "candidate_items": (["C"], TensorProto.INT64)}
    names = ADAPT_INPUTS if adapt else SCORER_INPUTS
    inputs = [helper.make_tensor_value_info(n, vec[n][1], vec[n][0]) for n in names]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["C"])]
    graph = helper.make_graph(g.nodes, "metarec_adapt" if adapt else "metarec_scorer",
                              inputs, outputs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="metarec")
    proto.ir_version = min(proto.ir_version, 10)  # readable by older runtimes too
    if not adapt:  # the scorer has no support inputs: drop what only they fed
        _prune(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _prune(proto: onnx.ModelProto) -> None:
    """Remove initializers no node reads (the scorer's unused rates and constants)."""
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


# --------------------------------------------------------------------------- export


def export_onnx(model: Estimator, features: FeatureArrays, meta_cfg: MetaConfig,
                out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                per_param_lr: Mapping[str, torch.Tensor] | None = None,
                ridge_lambda: torch.Tensor | None = None,
                user_encoders: Sequence[Mapping[str, Any]] | None = None,
                titles: Mapping[int, str] | None = None,
                rating_range: tuple[float, float] = (1.0, 5.0),
                extra: Mapping[str, Any] | None = None) -> ExportResult:
    """Write ``model.onnx``, ``scorer.onnx`` and ``metadata.json`` into ``out_dir`` atomically.

    Args:
        model: the trained estimator (evaluation mode is irrelevant: it has no dropout).
        features: the arrays the model was built from (item/user ids and fields).
        meta_cfg: inner steps and rate baked into the graph (``learner``/``adapted`` checked).
        per_param_lr: Meta-SGD's learned rates by parameter name (replaces ``inner_lr``).
        ridge_lambda: the ridge learner's (H + 1,) penalties: the graph adapts the output
            layer in closed form instead of by gradient steps.
        user_encoders: ``FeatureEncoders.to_dict()["user"]``, to encode a request's user
            attributes at serving time (None: requests carry no user features).
        titles: canonical item id -> title, shown by ``metarec recommend`` and the API.
        rating_range: (min, max) rating a request may carry (the training scale).
        extra: more JSON-able metadata (lineage: dataset hash, git sha...).
    """
    _check_exportable(model, meta_cfg)
    n_items = int(model.item_table.shape[0])
    if len(features.item_ids) != n_items or len(features.user_fields) != len(model.user_emb):
        raise ValueError(f"features ({len(features.item_ids)} items, {len(features.user_fields)} "
                         f"user fields) do not match the model ({n_items} items, "
                         f"{len(model.user_emb)} user fields)")
    if user_encoders is not None:
        cols = [e["column"] for e in user_encoders]
        if tuple(cols) != tuple(features.user_fields):
            raise ValueError(f"user encoders {cols} do not match user fields {features.user_fields}")
    if (ridge_lambda is None) == (meta_cfg.learner == "ridge"):
        raise ValueError("the ridge learner exports with its ridge_lambda, other learners without")
    model_proto = _build(model, meta_cfg, True, opset, per_param_lr, ridge_lambda)
    scorer_proto = _build(model, meta_cfg, False, opset, None)
    item_ids = [int(i) for i in features.item_ids]
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_FILE, "scorer_file": SCORER_FILE, "opset": opset,
        "inputs": list(ADAPT_INPUTS), "scorer_inputs": list(SCORER_INPUTS), "output": "scores",
        "inner_steps": meta_cfg.inner_steps, "inner_lr": meta_cfg.inner_lr,
        "learner": meta_cfg.learner, "per_param_lr": per_param_lr is not None,
        "adaptation": "ridge" if ridge_lambda is not None else "gradient_steps",
        "item_ids": item_ids,
        "titles": None if titles is None else [titles.get(i) for i in item_ids],
        "user_fields": list(features.user_fields),
        "user_cardinality": [int(c) for c in features.user_cardinality],
        "user_encoders": None if user_encoders is None else [dict(e) for e in user_encoders],
        "rating_range": [float(rating_range[0]), float(rating_range[1])],
        "extra": dict(extra or {}),
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        onnx.save_model(model_proto, tmp / MODEL_FILE)
        onnx.save_model(scorer_proto, tmp / SCORER_FILE)
        write_json(tmp / METADATA_FILE, metadata)
    log.info("exported %d items, %d inner steps -> %s", n_items, meta_cfg.inner_steps, out_dir)
    return ExportResult(out_dir, out_dir / MODEL_FILE, out_dir / SCORER_FILE,
                        out_dir / METADATA_FILE, metadata)


# --------------------------------------------------------------------------- parity


def cpu_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime session on the CPU provider with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def torch_reference(model: Estimator, meta_cfg: MetaConfig, user_cat: torch.Tensor,
                    items: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor,
                    candidates: torch.Tensor,
                    per_param_lr: Mapping[str, torch.Tensor] | None = None,
                    ridge_lambda: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of ``candidates`` after :func:`metarec.meta.inner.adapt` on the support set
    (with ``ridge_lambda``: after :func:`metarec.meta.inner.ridge_head`, the ridge learner).

    Shapes: user_cat (Fu,), items/ratings/mask (S,), candidates (C,) -> (C,). This is what
    the learners' ``predict`` computes in MeLU mode (towers once, decision MLP adapted).
    """
    from metarec.meta.inner import adapt, ridge_head

    if ridge_lambda is not None:
        with torch.no_grad():
            return ridge_head(model, model.embed(user_cat[None], items[None]), items[None],
                              ratings[None], mask[None], model.embed(user_cat[None], candidates[None]),
                              candidates[None], ridge_lambda)[0]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    adapted = frozenset(n for n in params if n.startswith(DECISION_PREFIX))
    feats = model.embed(user_cat, items)
    fast = adapt(model, params, buffers, user_cat, items, ratings, mask,
                 steps=meta_cfg.inner_steps, lr=meta_cfg.inner_lr, adapted=adapted,
                 first_order=True, per_param_lr=per_param_lr, feats=feats)
    scores = model.decide(fast, model.embed(user_cat, candidates))
    return (scores + model.offset(candidates)).detach()


def parity_check(model: Estimator, export: ExportResult | str | Path, meta_cfg: MetaConfig, *,
                 n_tasks: int = 16, tol: float = 1e-4, seed: int = 0,
                 per_param_lr: Mapping[str, torch.Tensor] | None = None,
                 ridge_lambda: torch.Tensor | None = None) -> ParityReport:
    """Compare ONNX Runtime (CPU) with PyTorch on ``n_tasks`` random tasks.

    Support sizes cycle through 0, 1, 2, 5, 10, 37 (capped at the item count); one task in
    three pads its support with masked slots. Ratings are drawn from 1..5, candidates from all
    item rows. ``passed`` is ``max_abs_err <= tol`` for both graphs.
    """
    out_dir = Path(export.out_dir if isinstance(export, ExportResult) else export)
    adapt_sess = cpu_session(out_dir / MODEL_FILE)
    score_sess = cpu_session(out_dir / SCORER_FILE)
    rng = np.random.default_rng(seed)
    n_items, n_users = int(model.item_table.shape[0]), int(model.user_table.shape[0])
    cards = [emb.num_embeddings for emb in model.user_emb]
    sizes_cycle = [0, 1, 2, 5, 10, 37]
    worst = worst_scorer = 0.0
    sizes = []
    model = model.eval()
    for t in range(n_tasks):
        s = min(sizes_cycle[t % len(sizes_cycle)], n_items)
        pad = 3 if t % 3 == 2 else 0
        if n_users and t % 2 == 0:
            user = model.user_table[int(rng.integers(n_users))].cpu().numpy()
        else:  # a new user: random encoded attributes
            user = np.array([rng.integers(c) for c in cards], dtype=np.int64)
        items = np.concatenate([rng.choice(n_items, s, replace=False), np.zeros(pad, np.int64)])
        ratings = np.concatenate([rng.integers(1, 6, s), np.zeros(pad)]).astype(np.float32)
        mask = np.concatenate([np.ones(s), np.zeros(pad)]).astype(np.float32)
        perm = rng.permutation(s + pad)  # padding anywhere, not only at the end
        items, ratings, mask = items[perm].astype(np.int64), ratings[perm], mask[perm]
        cands = rng.choice(n_items, int(rng.integers(1, min(n_items, 64) + 1)), replace=False)
        feed = {"user_cat": user.astype(np.int64), "support_items": items,
                "support_ratings": ratings, "support_mask": mask,
                "candidate_items": cands.astype(np.int64)}
        got = adapt_sess.run(["scores"], feed)[0]
        dev = model.item_table.device
        tt = {k: torch.as_tensor(v, device=dev) for k, v in feed.items()}
        want = torch_reference(model, meta_cfg, tt["user_cat"], tt["support_items"],
                               tt["support_ratings"], tt["support_mask"], tt["candidate_items"],
                               per_param_lr, ridge_lambda).cpu().numpy()
        worst = max(worst, float(np.max(np.abs(got - want))))
        got0 = score_sess.run(["scores"], {"user_cat": feed["user_cat"],
                                           "candidate_items": feed["candidate_items"]})[0]
        with torch.no_grad():
            want0 = model(tt["user_cat"], tt["candidate_items"]).cpu().numpy()
        worst_scorer = max(worst_scorer, float(np.max(np.abs(got0 - want0))))
        sizes.append(s)
    passed = bool(worst <= tol and worst_scorer <= tol and np.isfinite(worst + worst_scorer))
    report = ParityReport(worst, worst_scorer, tol, n_tasks, tuple(sizes), passed)
    log.info("ONNX parity: max |err| %.3g (adapted), %.3g (scorer), tol %.1g -> %s",
             worst, worst_scorer, tol, "passed" if passed else "FAILED")
    return report
