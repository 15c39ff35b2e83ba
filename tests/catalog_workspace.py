"""A small workspace on the synthetic CSV dataset under the MeLU protocol (new users and new
items), trained, evaluated and exported through the pipeline's own stage functions: what the
catalog tests add items to, serve and evaluate. Text embeddings come from a deterministic
stand-in written into the embedding cache under the configured model's id, so the items the
tests add find their vectors there (no language model is loaded)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from metarec.config import Config, config_from_dict
from tests.synth import SYNTH_PARAMS, write_synthetic_csv

YEAR_THRESHOLD = 1993  # items after it are the "new" ones (item_cold, user_item_cold)
TEXT_DIM = 16


def stand_in_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic (N, 16) unit vectors from each text's bytes (a stand-in language model)."""
    out = np.zeros((len(texts), TEXT_DIM), np.float32)
    for i, t in enumerate(texts):
        raw = np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.float32)
        for j in range(TEXT_DIM):
            out[i, j] = np.sin(raw[j::TEXT_DIM].sum() * 0.37 + j) if len(raw) > j else 0.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def workspace_config(root: Path, **overrides) -> Config:
    params = copy.deepcopy(SYNTH_PARAMS)
    params["data"].update(raw_dir=str(root / "data"), prepared_dir=str(root / "prepared"))
    params["features"] = {"cache_dir": str(root / "cache"), "out_dir": str(root / "features")}
    params["tasks"] = {"protocol": "melu", "melu_item_year_threshold": YEAR_THRESHOLD,
                       "min_ratings": 4, "query_size": 2, "out_dir": str(root / "tasks")}
    params["train"].update(out_dir=str(root / "train"), max_steps=20, eval_every=10)
    # the report only has to hold the full-support metrics the catalog path is compared with
    params["evaluation"] = {"bootstrap_samples": 20, "curve_shots": [1], "plot_metrics": [],
                            "out_dir": str(root / "evaluation")}
    params["export"] = {"out_dir": str(root / "export")}
    params["catalog"] = {"dir": str(root / "catalogs"), "poll_s": 0.2}
    params["tracking"] = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    return config_from_dict(params)


def build_workspace(root: Path, catalog_item_ids=None):
    """Data, features, tasks, a short training, the report and the export; returns (cfg,
    tables, report)."""
    from metarec.data.sources import read_source
    from metarec.data.tables import write_tables
    from metarec.features.build import prepare_features
    from metarec.pipeline.evaluate import evaluate_models
    from metarec.pipeline.export import export_model
    from metarec.pipeline.tasks import build_task_sets
    from metarec.pipeline.train import train_baseline_models, train_meta_model

    write_synthetic_csv(root / "data" / "csv", n_users=120, n_items=100)
    cfg = workspace_config(root)
    tables = read_source(cfg.data)
    write_tables(tables, cfg.data.prepared_dir)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=stand_in_encoder)
    build_task_sets(cfg, tables)
    train_meta_model(cfg, resume=False)
    train_baseline_models(cfg)
    report = evaluate_models(cfg)
    export_model(cfg, catalog_item_ids=catalog_item_ids)
    return cfg, tables, report


def new_item_ids(tables) -> list[int]:
    """The items the MeLU protocol treats as new (released after the threshold)."""
    items = tables.items
    return sorted(items.loc[items["year"] > YEAR_THRESHOLD, "item_id"].astype(int).tolist())
