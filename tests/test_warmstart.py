"""Warm starts (train.init_from: champion): the champion's meta-parameters carried onto a model
built on new data, embedding rows by value; a different shape is an error naming the
parameter; and, on the real stack (MLflow on a temporary SQLite store, the CLI stages on
synthetic data), a registered champion starting the next training and re-evaluated by the gate
on the new test users."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metarec.features.encoders import (BagEncoder, BucketEncoder, CategoricalEncoder,
                                       FeatureEncoders)
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.warmstart import ChampionState, WarmStartError, transfer
from tests.test_models import TINY, plain_meta, tiny_features

OLD = FeatureEncoders(
    user=(CategoricalEncoder("gender", ("F", "M")), BucketEncoder("age", (20.0, 30.0, 40.0))),
    item=(BucketEncoder("year", (1990.0, 2000.0)),),
    item_multi=(BagEncoder("genre", ("a", "b", "c", "d")),))
# New data: a third gender value, genre "a" gone and "e" new (indices shift), same buckets.
NEW = dataclasses.replace(OLD, user=(CategoricalEncoder("gender", ("F", "M", "X")), OLD.user[1]),
                          item_multi=(BagEncoder("genre", ("b", "c", "d", "e")),))


def _champion(model, learner, encoders=OLD, item_ids=None) -> ChampionState:
    return ChampionState(version=3, model_state=model.state_dict(),
                         learner_state=learner.state_dict(), encoders=encoders,
                         item_ids=list(item_ids if item_ids is not None else range(1000, 1030)),
                         params={}, sha256="x" * 64)


def _new_features(**changes):
    feats = tiny_features(seed=1)
    return dataclasses.replace(feats, user_cardinality=(4, 5), **changes)


def test_transfer_carries_rows_by_value_and_parameters_exactly():
    torch.manual_seed(0)
    old = build_model(tiny_features(), TINY)
    old_learner = build_learner(old, plain_meta())
    torch.manual_seed(1)
    new = build_model(_new_features(), TINY)
    learner = build_learner(new, plain_meta())
    counts = transfer(_champion(old, old_learner), new, learner, NEW, list(range(1000, 1030)))
    g_old, g_new = old.user_emb[0].weight, new.user_emb[0].weight
    assert torch.equal(g_new[1], g_old[1]) and torch.equal(g_new[2], g_old[2])  # F, M
    assert torch.equal(g_new[3], g_old[0]) and torch.equal(g_new[0], g_old[0])  # X -> unknown
    b_old, b_new = old.bag_emb["genre"].weight, new.bag_emb["genre"].weight
    for new_row, old_row in ((0, 0), (1, 1), (2, 3), (3, 4), (4, 5), (5, 1)):  # b c d; e unknown
        assert torch.equal(b_new[new_row], b_old[old_row])
    for name, tensor in old.decision.state_dict().items():
        assert torch.equal(new.decision.state_dict()[name], tensor)
    # Buffers are the new data's, not the champion's.
    assert torch.equal(new.user_table, torch.as_tensor(_new_features().user_cat))
    # rows_new: item ids; parameters: the state_dict's (per-field embedding tables, as
    # checkpoints hold them, though the model keeps them in one fused table)
    buffers = dict(new.named_buffers())
    assert counts["rows_new"] == 0 and counts["parameters"] == len(
        [k for k in new.state_dict() if k not in buffers])


def test_bucket_rows_follow_their_values_when_edges_move():
    from metarec.training.warmstart import _bucket_map

    old, new = BucketEncoder("age", (20.0, 30.0, 40.0)), BucketEncoder("age", (25.0, 35.0))
    # new buckets missing, (<25), [25,35), [35,inf) at 20, 30, 40 -> old missing, [20,30),
    # [30,40), [40,inf)
    assert list(_bucket_map(old, new)) == [0, 2, 3, 4]


@pytest.mark.parametrize("change, words", [
    (dict(model=dataclasses.replace(TINY, embedding_dim=6)), "user_emb.0.weight"),
    (dict(model=dataclasses.replace(TINY, hidden=(8, 4))), "decision.1.weight"),
    (dict(meta=plain_meta(learner="metasgd")), "learner state"),
    (dict(encoders=dataclasses.replace(NEW, user=NEW.user[:1] + (BucketEncoder("height", ()),))),
     "user feature columns differ"),
])
def test_a_different_shape_is_an_error_not_a_cold_start(change, words):
    torch.manual_seed(0)
    old = build_model(tiny_features(), TINY)
    champion = _champion(old, build_learner(old, plain_meta()))
    new = build_model(_new_features(), change.get("model", TINY))
    learner = build_learner(new, change.get("meta", plain_meta()))
    before = {k: v.clone() for k, v in new.state_dict().items()}
    with pytest.raises(WarmStartError, match=words.replace(".", r"\.")):
        transfer(champion, new, learner, change.get("encoders", NEW), list(range(1000, 1030)))
    if "encoders" not in change:
        assert all(torch.equal(before[k], v) for k, v in new.state_dict().items())


@pytest.mark.slow  # two whole retrains: ~3.5 min on two shared cores
def test_warm_start_from_a_registered_champion(tmp_path, monkeypatch):
    """Real stack on synthetic data: retrain registers and promotes version 1 (MLflow on a
    temporary SQLite store); feedback from new users is ingested; the next retrain starts
    from version 1's meta-parameters, the evaluation re-evaluates version 1 on the new test
    users, and version 2 carries its training state and the feedback watermark."""
    import dagster as dg

    from metarec import registry
    from metarec.config import load_config
    from metarec.data.fetch import fetch
    from metarec.feedback.events import IntakeRules, parse_events
    from metarec.feedback.ingest import ingest
    from metarec.feedback.store import EventStore
    from metarec.pipeline.train import train_meta_model
    from orchestration.run import run_retrain
    from tests.synth import SYNTH_PARAMS, write_synthetic_csv

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("METAREC_FEEDBACK_URI", raising=False)
    base = {**SYNTH_PARAMS, "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "gate": {**SYNTH_PARAMS["gate"], "auto_promote": True,
                     "allow_no_training_gain": True}}
    Path("params.yaml").write_text(yaml.safe_dump(base))
    warm = {**base, "train": {**base["train"], "init_from": "champion"}}
    Path("warm.yaml").write_text(yaml.safe_dump(warm))
    cfg = load_config("params.yaml")
    fetch(cfg.data, path=write_synthetic_csv(tmp_path / "incoming"), root=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    first = run_retrain("params.yaml", instance)
    assert first.success and registry.aliases(cfg.tracking)["champion"] == 1, first

    # 12 new users, 16 ratings each, with attributes: the next data version.
    rng = np.random.default_rng(5)
    events = [{"event_id": f"u{u}-{i}", "user_id": 900 + u, "item_id": int(item),
               "rating": int(rng.integers(1, 6)), "timestamp": 1_700_000_000 + 100 * u + i,
               "user_features": {"gender": "FM"[u % 2], "age": 20 + u}}
              for u in range(12) for i, item in enumerate(rng.choice(80, 16, replace=False) + 1)]
    EventStore(f"sqlite:///{tmp_path}/feedback.db").add(parse_events(events, IntakeRules()))
    assert ingest(cfg).accepted == len(events)

    second = run_retrain("warm.yaml", instance)
    own = tmp_path / "artifacts" / "runs" / second.run_id
    summary = json.loads((own / "train" / "summary.json").read_text())
    assert summary["init"]["from"] == "champion" and summary["init"]["version"] == 1
    assert summary["init"]["rows_mapped"] > 0
    # model.head_factors auto with a warm start: the champion's choice, trained once
    first_summary = json.loads((tmp_path / "artifacts" / "runs" / first.run_id / "train" /
                                "summary.json").read_text())
    assert first_summary["head_factors_choice"] is not None  # the first run chose
    assert summary["model"] == first_summary["model"] and summary["head_factors_choice"] is None
    report = json.loads((own / "evaluation" / "report.json").read_text())
    assert report["training"]["champion"]["evaluated"] == "here"
    assert set(report["metrics"]) and all("champion" in m for m in report["metrics"].values())
    gate_lines = second.check_details["evaluation_report:gate"]
    assert any("champion version 1 re-evaluated" in line for line in gate_lines)
    assert "(with champion)" in gate_lines[0] or any("vs champion" in x for x in gate_lines)
    if second.success:  # registered: its version holds the training state and the watermark
        mlc = registry.client(cfg.tracking)
        mv = mlc.get_model_version("metarec", "2")
        files = json.loads(mv.tags["artifact_sha256"])
        assert {"training/meta_model.pt", "training/encoders.json",
                "training/params.json"} <= set(files)
        assert mv.tags["feedback_watermark"] == str(len(events))

    # Another architecture cannot start from the champion: an error naming the parameter.
    wider = {**warm, "model": {"hidden": [32, 32]}}
    Path("wider.yaml").write_text(yaml.safe_dump(wider))
    with pytest.raises(WarmStartError, match=r"decision\.0\.weight"):
        train_meta_model(load_config("wider.yaml"), track=False)
