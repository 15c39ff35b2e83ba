"""``export_onnx``: the two graphs and ``metadata.json`` written into an export directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from metarec.adaptation.spec import Adaptation
from metarec.catalog.artifact import Catalog, model_key, write_catalog
from metarec.data.arrays import FeatureArrays
from metarec.export.item_graph import (build_item_encoder, catalog_rows, encoder_inputs,
                                       encoder_outputs)
from metarec.export.onnx_graph import build_graph, check_stackable
from metarec.export.runtime import (ADAPT_INPUTS, CATALOG_DIR, FORMAT_VERSION,
                                    ITEM_ENCODER_FILE, METADATA_FILE, MODEL_FILE, SCORE_FILE,
                                    SCORER_FILE, SCORER_INPUTS, USER_FILE)
from metarec.export.user_graph import (build_score_graph, build_user_graph, head_width,
                                       item_width, score_inputs, state_names)
from metarec.io import atomic_dir, write_json
from metarec.models.estimator import Estimator

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: the directory and its three files, plus the metadata written."""

    out_dir: Path
    model_path: Path
    scorer_path: Path
    metadata_path: Path
    metadata: dict[str, Any] = field(repr=False)


def _check(model: Estimator, adaptation: Adaptation, features: FeatureArrays,
           user_encoders: Sequence[Mapping[str, Any]] | None) -> None:
    if not adaptation.exportable:
        raise ValueError(f"cannot export learner {adaptation.learner!r}: "
                         f"{adaptation.not_exportable}")
    check_stackable(model)
    n_items = int(model.item_table.shape[0])
    if len(features.item_ids) != n_items or len(features.user_fields) != len(model.user_emb):
        raise ValueError(f"features ({len(features.item_ids)} items, {len(features.user_fields)} "
                         f"user fields) do not match the model ({n_items} items, "
                         f"{len(model.user_emb)} user fields)")
    if user_encoders is not None:
        cols = [e["column"] for e in user_encoders]
        if tuple(cols) != tuple(features.user_fields):
            raise ValueError(f"user encoders {cols} do not match user fields {features.user_fields}")


def export_onnx(model: Estimator, adaptation: Adaptation, features: FeatureArrays,
                out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                user_encoders: Sequence[Mapping[str, Any]] | None = None,
                titles: Mapping[int, str] | None = None,
                rating_range: tuple[float, float] = (1.0, 5.0),
                extra: Mapping[str, Any] | None = None,
                item_encoders: Mapping[str, Any] | None = None,
                text: Mapping[str, Any] | None = None,
                catalog_item_ids: Sequence[int] | None = None,
                feedback: Mapping[str, Any] | None = None) -> ExportResult:
    """Write the graphs, the export's catalog and ``metadata.json`` into ``out_dir`` atomically.

    Files: ``model.onnx`` and ``scorer.onnx`` (every item baked in: the single-graph path),
    and the catalog path: ``item_encoder.onnx``, ``user.onnx``, ``score.onnx`` and
    ``catalog/``, the catalog's version 1 (:mod:`metarec.catalog`).

    Args:
        model: the trained estimator (evaluation mode is irrelevant: it has no dropout).
        adaptation: ``learner.adaptation()``: what the graph computes on the support set
            (refused with its reason when ``adaptation.not_exportable``).
        features: the arrays the model was built from (item/user ids and fields).
        user_encoders: ``FeatureEncoders.to_dict()["user"]``, to encode a request's user
            attributes at serving time (None: requests carry no user features).
        titles: canonical item id -> title, shown by ``metarec recommend`` and the API.
        rating_range: (min, max) rating a request may carry (the training scale).
        extra: more JSON-able metadata (lineage: dataset hash, git sha...).
        item_encoders: ``FeatureEncoders.to_dict()`` (its "item" and "item_multi"), to encode
            new items' attributes (None: items cannot be added, only retired).
        text: ``{"model": id, "normalize": bool}`` of the language model the item texts were
            embedded with (new items' texts must be embedded alike).
        catalog_item_ids: the items of catalog version 1 (default: every item of the model;
            others can be added later with ``metarec items add``).
        feedback: ``{"mode": "implicit", "rule": data.implicit as a dict}`` for a model of
            implicit feedback (serving turns a request's interactions into positives and
            sampled negatives by that rule); default explicit ratings.
    """
    _check(model, adaptation, features, user_encoders)
    model_proto = build_graph(model, adaptation, opset)
    scorer_proto = build_graph(model, None, opset)
    split = {ITEM_ENCODER_FILE: build_item_encoder(model, opset),
             USER_FILE: build_user_graph(model, adaptation, opset),
             SCORE_FILE: build_score_graph(model, adaptation, opset)}
    item_ids = [int(i) for i in features.item_ids]
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_FILE, "scorer_file": SCORER_FILE, "opset": opset,
        "inputs": list(ADAPT_INPUTS), "scorer_inputs": list(SCORER_INPUTS), "output": "scores",
        "adaptation": adaptation.to_dict(),
        "item_ids": item_ids,
        "titles": None if titles is None else [titles.get(i) for i in item_ids],
        "user_fields": list(features.user_fields),
        "user_cardinality": [int(c) for c in features.user_cardinality],
        "user_encoders": None if user_encoders is None else [dict(e) for e in user_encoders],
        "rating_range": [float(rating_range[0]), float(rating_range[1])],
        "feedback": dict(feedback or {"mode": "explicit"}),
        "extra": dict(extra or {}),
        "catalog": {
            "dir": CATALOG_DIR, "item_encoder": ITEM_ENCODER_FILE, "user_graph": USER_FILE,
            "score_graph": SCORE_FILE, "encoder_inputs": encoder_inputs(model),
            "encoder_outputs": encoder_outputs(model),
            "state": state_names(model, adaptation), "score_inputs": score_inputs(model, adaptation),
            "item_width": item_width(model), "first_width": int(model.decision[0].out_features),
            "head_width": head_width(model),
            "item_encoders": None if item_encoders is None else {
                "item": list(item_encoders["item"]), "item_multi": list(item_encoders["item_multi"])},
            "item_fields": list(features.item_fields), "text": dict(text or {}) or None},
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        onnx.save_model(model_proto, tmp / MODEL_FILE)
        onnx.save_model(scorer_proto, tmp / SCORER_FILE)
        for name, proto in split.items():
            onnx.save_model(proto, tmp / name)
        metadata["catalog"]["model_key"] = model_key(tmp, sorted(split))
        write_catalog(tmp / CATALOG_DIR, initial_catalog(model, features, titles, catalog_item_ids),
                      {"version": 1, "parent": None, "model_key": metadata["catalog"]["model_key"],
                       "changes": {"from": "export"}, "model": dict(extra or {})})
        write_json(tmp / METADATA_FILE, metadata)
    log.info("exported %d items, %s adaptation of learner %s -> %s", len(item_ids),
             adaptation.kind, adaptation.learner, out_dir)
    return ExportResult(out_dir, out_dir / MODEL_FILE, out_dir / SCORER_FILE,
                        out_dir / METADATA_FILE, metadata)


def initial_catalog(model: Estimator, features: FeatureArrays, titles: Mapping[int, str] | None,
                    item_ids: Sequence[int] | None) -> Catalog:
    """Catalog version 1: the model's own items (``item_ids``, default all) in row order."""
    all_ids = np.asarray(features.item_ids, np.int64)
    if item_ids is None:
        rows = np.arange(len(all_ids))
    else:
        lookup = {int(i): r for r, i in enumerate(all_ids.tolist())}
        unknown = sorted({int(i) for i in item_ids} - set(lookup))
        if unknown:
            raise ValueError(f"catalog_item_ids: {unknown[:20]} are not items of the model")
        rows = np.array(sorted(lookup[int(i)] for i in set(item_ids)), np.int64)
    arrays = catalog_rows(model, rows)
    ids = all_ids[rows]
    return Catalog(ids=ids, titles=[None if titles is None else titles.get(int(i)) for i in ids],
                   retired=np.zeros(len(ids), bool), **arrays)
