"""Implicit feedback end to end on a count dataset through the generic CSV source: the data
contract, labels and confidences, implicit tasks, a bce meta-learner, the full-catalog report
and a gate on it, the ONNX export (parity) and serving, all through the pipeline's own stage
functions on a synthetic play-count file (Last.FM-like)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from metarec.config import config_from_dict
from tests.catalog_workspace import stand_in_encoder
from tests.synth import SYNTH_PARAMS, write_playcount_csv


def playcount_config(root, **overrides):
    params = copy.deepcopy(SYNTH_PARAMS)
    params["data"].update(raw_dir=str(root / "data"), prepared_dir=str(root / "prepared"),
                          feedback="implicit",
                          implicit={"threshold": 1, "confidence": "log", "alpha": 1.0,
                                    "epsilon": 1.0, "negatives": 2})
    params["data"]["csv"]["columns"] = {"rating": "plays", "timestamp": None}
    params["validation"] = {"min_task_users": 10, "rating_min": 1, "rating_max": 100000,
                            "out_dir": str(root / "validation"), "data_docs": False}
    params["features"] = {"cache_dir": str(root / "cache"), "out_dir": str(root / "features")}
    params["tasks"] = {"min_ratings": 8, "query_size": 4, "out_dir": str(root / "tasks")}
    params["train"].update(out_dir=str(root / "train"), max_steps=60, eval_every=20)
    params["evaluation"] = {"bootstrap_samples": 50, "curve_shots": [0, 1, 3],
                            "metrics": ["ndcg"], "ks": [3], "curve_metrics": ["ndcg_at_3"],
                            "plot_metrics": [], "out_dir": str(root / "evaluation"),
                            "full_catalog": {"ks": [10]}}
    params["gate"] = {"metrics": ["full_recall_at_10"], "baselines": ["most_pop"],
                      "rule": "point", "curve_shots": ["all"]}
    params["export"] = {"out_dir": str(root / "export"), "parity_tasks": 6}
    params["catalog"] = {"dir": str(root / "catalogs")}
    params["tracking"] = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    return config_from_dict(params)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from metarec.data.sources import read_source
    from metarec.data.tables import write_tables
    from metarec.data.validation import validate_tables
    from metarec.features.build import prepare_features
    from metarec.pipeline.evaluate import evaluate_models
    from metarec.pipeline.export import export_model
    from metarec.pipeline.tasks import build_task_sets
    from metarec.pipeline.train import train_baseline_models, train_meta_model

    root = tmp_path_factory.mktemp("plays")
    write_playcount_csv(root / "data" / "csv", n_items=200)
    cfg = playcount_config(root)
    tables = read_source(cfg.data)
    report = validate_tables(tables, cfg.validation, cfg.tasks)
    assert report.passed, report.failures
    write_tables(tables, cfg.data.prepared_dir)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=stand_in_encoder,
                     data=cfg.data)
    sets = build_task_sets(cfg, tables)
    summary = train_meta_model(cfg, resume=False, track=False)
    train_baseline_models(cfg)
    evaluation = evaluate_models(cfg)
    export, parity = export_model(cfg)
    return cfg, tables, sets, summary, evaluation, export, parity


def test_counts_become_weighted_positives_with_sampled_negatives(workspace):
    cfg, tables, sets, *_ = workspace
    train = sets["train"]
    assert train.implicit
    pos = train.support_mask & (train.support_ratings == 1)
    neg = train.support_mask & (train.support_ratings == 0)
    assert neg.sum() == 2 * pos.sum()
    # confidence 1 + ln(1 + plays): positives weigh >= 1 + ln 2, negatives exactly 1
    assert train.support_weights[pos].min() >= 1 + np.log(2) - 1e-6
    assert (train.support_weights[neg] == 1).all()
    manifest = json.loads(Path(cfg.tasks.out_dir, "manifest.json").read_text())
    assert manifest["feedback"] == "implicit" and manifest["implicit"]["confidence"] == "log"


def test_report_ranks_the_whole_catalog_and_the_gate_reads_it(workspace):
    from metarec.pipeline.evaluate import gate_decision

    cfg, _, _, summary, report, *_ = workspace
    res = report.metrics["test"]
    assert {"most_pop", "item_knn", "global", "ridge"} <= set(res)
    assert "mae" not in res["ridge"]  # rating errors mean nothing for logits vs labels
    for method in ("ridge", "most_pop", "item_knn"):
        value = res[method]["full_recall_at_10"]
        assert 0.0 <= value <= 1.0
        lo, hi = report.intervals["test"][method]["full_recall_at_10"]
        assert lo <= value <= hi
    assert report.curves["test"]["ridge"]["0"]["full_recall_at_10"] >= 0.0
    decision = gate_decision(cfg, report)
    compared = [c for c in decision.checks if c.against == "most_pop"]
    assert compared and {c.metric for c in compared} == {"full_recall_at_10"}
    assert compared[0].candidate == pytest.approx(res["ridge"]["full_recall_at_10"])


def test_rating_metrics_cannot_gate_an_implicit_model(workspace):
    import dataclasses

    from metarec.pipeline.evaluate import evaluate_models

    cfg = workspace[0]
    bad = dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, metrics=("mae",)))
    with pytest.raises(ValueError, match=r"gate.metrics \['mae'\] compare ratings"):
        evaluate_models(bad)


def test_implicit_export_has_parity_and_serves_interactions(workspace):
    from metarec.serve import Recommender

    cfg, tables, *_, export, parity = workspace
    assert parity.passed, parity
    meta = json.loads((export.out_dir / "metadata.json").read_text())
    assert meta["adaptation"]["loss"] == "bce" and meta["feedback"]["mode"] == "implicit"
    rec = Recommender(export.out_dir)
    plays = {3: 40, 7: 12, 11: 1}
    out = rec.recommend({"gender": "F"}, plays, k=5)
    assert len(out) == 5 and not {r.item_id for r in out} & set(plays)
    assert out == rec.recommend({"gender": "F"}, plays, k=5)  # seeded negatives: stable
    rows, labels, mask = rec.support_set(*rec.encode_ratings(plays))
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(mask[:3], 1 + np.log1p(np.array([40, 12, 1], np.float32)),
                               rtol=1e-6)
    assert not set(rows[3:].tolist()) & set(rows[:3].tolist())
