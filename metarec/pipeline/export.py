"""The export stage: the trained learner's adaptation written into ONNX graphs (the
single-graph ``model.onnx`` and the catalog path: item encoder, user graph, catalog version 1),
checked against PyTorch; the parity report lands beside the graphs as ``parity.json``. The metadata's
``extra`` names the trained model exported (``model_sha256`` of meta_model.pt) and its MLflow
run, which registration checks against the evaluation report's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from metarec.config import Config, ExportConfig
from metarec.export.runtime import PARITY_FILE
from metarec.io import file_sha256, write_json
from metarec.pipeline.inputs import Inputs, load_inputs
from metarec.pipeline.train import META_FILE, SUMMARY_FILE, load_meta_model


def export_model(cfg: Config, inputs: Inputs | None = None,
                 lineage: dict[str, Any] | None = None,
                 catalog_item_ids: Sequence[int] | None = None):
    """ONNX export (the learner's own adaptation inside the graph) + parity check; returns
    (ExportResult, ParityReport) and writes parity.json beside the graphs. The catalog's
    version 1 holds ``catalog_item_ids`` (default: every item of the features)."""
    from metarec.data.tables import read_tables
    from metarec.export import export_onnx, parity_check
    from metarec.features.build import load_encoders, read_features_manifest

    inputs = inputs or load_inputs(cfg.features, cfg.tasks)
    model, learner = load_meta_model(cfg, inputs.features)
    identity = _trained_model_identity(cfg)
    adaptation = learner.adaptation()
    items = read_tables(cfg.data.prepared_dir).items
    rating_range = ((0.0, 1.0) if cfg.validation.implicit
                    else (cfg.validation.rating_min, cfg.validation.rating_max))
    feedback = None
    if cfg.data.feedback == "implicit":  # requests carry interactions: labels or counts >= 0
        feedback = {"mode": "implicit", "rule": dataclasses.asdict(cfg.data.implicit)}
        rating_range = (0.0, max(float(rating_range[1]), 1e12))
    encoders = load_encoders(cfg.features.out_dir).to_dict()
    text_model = read_features_manifest(cfg.features.out_dir).get("text_model")
    result = export_onnx(model, adaptation, inputs.features, cfg.export.out_dir,
                         opset=cfg.export.opset, user_encoders=encoders["user"],
                         titles=dict(zip(items.item_id.tolist(), items.title.tolist())),
                         rating_range=rating_range, extra={**identity, **(lineage or {})},
                         item_encoders=encoders,
                         text=None if text_model is None else {
                             "model": text_model, "normalize": cfg.features.text_normalize},
                         catalog_item_ids=catalog_item_ids, feedback=feedback)
    parity = parity_check(model, result, adaptation, n_tasks=cfg.export.parity_tasks,
                          tol=cfg.export.parity_tol, seed=cfg.seed)
    write_json(Path(cfg.export.out_dir) / PARITY_FILE, parity.to_dict())
    return result, parity


def _trained_model_identity(cfg: Config) -> dict[str, Any]:
    """The sha256 of meta_model.pt and, when its summary.json names one, the MLflow run."""
    out: dict[str, Any] = {"model_sha256": file_sha256(Path(cfg.train.out_dir) / META_FILE)}
    summary = Path(cfg.train.out_dir) / SUMMARY_FILE
    if summary.exists():
        run = json.loads(summary.read_text(encoding="utf-8")).get("mlflow_run_id")
        if run:
            out["mlflow_run_id"] = run
    return out


def read_parity(export_cfg: ExportConfig) -> dict[str, Any]:
    """parity.json of the last export (``passed``, ``max_abs_err``, ``tol``...)."""
    path = Path(export_cfg.out_dir) / PARITY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec export` first")
    return json.loads(path.read_text(encoding="utf-8"))
