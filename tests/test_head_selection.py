"""``model.head_factors: auto`` (metarec.training.selection): the one-standard-error rule, the
candidates it trains, and the pipeline end to end on a small low-rank dataset, where the item
factor head must be chosen, recorded, reported and loaded back as trained."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from benchmarks.suite import generate, merge
from metarec.config import ModelConfig, config_from_dict
from metarec.models.estimator import build_model, resolve_head_factors
from metarec.training.selection import candidates, one_se_rule, select
from tests.catalog_workspace import stand_in_encoder
from tests.test_models import tiny_features


def test_rule_keeps_the_head_only_beyond_one_standard_error() -> None:
    rng = np.random.default_rng(0)
    without = rng.normal(1.0, 0.2, 200)
    noise = rng.normal(0.0, 0.05, 200)
    clear = one_se_rule(without, without - 0.05 + noise)
    assert clear.head_factors and clear.difference < -clear.standard_error
    assert clear.difference == pytest.approx(float(np.mean(-0.05 + noise)))
    assert clear.standard_error == pytest.approx(float(np.std(noise, ddof=1) / np.sqrt(200)))
    within = one_se_rule(without, without + noise - np.mean(noise) - 0.5 * clear.standard_error)
    assert not within.head_factors  # lower, but by less than one standard error
    assert not one_se_rule(without, without + 0.05 + noise).head_factors
    d = one_se_rule(without, without - 0.05 + noise).to_dict()
    assert d["rule"] == "one standard error" and d["tasks"] == 200


def test_rule_leaves_out_tasks_without_an_error_and_refuses_too_few() -> None:
    a = np.array([1.0, np.nan, 1.0, 1.0, 1.0])
    b = np.array([0.5, 0.1, np.nan, 0.6, 0.4])
    choice = one_se_rule(a, b)
    assert choice.tasks == 3 and choice.error_without == pytest.approx(1.0)
    assert choice.error_with == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one value per task"):
        one_se_rule(a, b[:4])
    with pytest.raises(ValueError, match=">= 2 validation tasks"):
        one_se_rule(np.array([1.0, np.nan]), np.array([0.5, 0.5]))


def test_candidates_and_resolution() -> None:
    auto = ModelConfig(item_factors=8, head_factors="auto")
    off, on = candidates(auto, "ridge")
    assert (off.head_factors, off.item_factors) == (False, 0)  # no factors left unused
    assert (on.head_factors, on.item_factors) == (True, 8)
    assert candidates(auto, "maml") == [off]  # only the ridge head reads the factors
    assert candidates(dataclasses.replace(auto, item_factors=0), "ridge") == [
        resolve_head_factors(auto, False)]
    fixed = ModelConfig(item_factors=8, head_factors=True)
    assert candidates(fixed, "ridge") == [fixed]
    tower = resolve_head_factors(dataclasses.replace(auto, tower_factors=True), False)
    assert tower.item_factors == 8  # the tower still reads them
    # "auto" builds the model without the head
    model = build_model(tiny_features(), dataclasses.replace(auto, hidden=(8,), embedding_dim=4,
                                                             text_proj_dim=4))
    assert not model.head_factors and model.head_width == 8


def test_select_trains_both_and_keeps_what_the_rule_picks() -> None:
    auto = ModelConfig(item_factors=8, head_factors="auto")
    seen = []

    def fit(m):
        seen.append(m.head_factors)
        return m.head_factors

    errors = {False: np.full(50, 1.0), True: np.linspace(0.4, 0.6, 50)}
    kept, cfg, choice = select(candidates(auto, "ridge"), fit, lambda t: errors[t])
    assert seen == [False, True] and kept is True and cfg.head_factors and choice.head_factors
    errors[True] = np.linspace(0.95, 1.1, 50)
    kept, cfg, choice = select(candidates(auto, "ridge"), fit, lambda t: errors[t])
    assert kept is False and not cfg.head_factors and not choice.head_factors
    kept, cfg, choice = select(candidates(auto, "melu"), fit, lambda t: errors[t])
    assert kept is False and choice is None
    with pytest.raises(ValueError, match="without the head, then with it"):
        select(list(reversed(candidates(auto, "ridge"))), fit, lambda t: errors[t])


def test_select_compares_on_the_fallback_criterion_when_a_training_fell_back() -> None:
    """The head-less training kept its fallback criterion's weights (its full-support error
    never beat step 0); the other stayed at step 0. On the first criterion the untrained one
    wins by construction; both are compared on the fallback's errors instead."""
    auto = ModelConfig(item_factors=8, head_factors="auto")
    first = {False: np.full(50, 0.75), True: np.linspace(0.6, 0.7, 50)}  # head wins here
    fallback = {False: np.full(50, 0.78), True: np.linspace(0.78, 0.82, 50)}
    fell_back = {False: True, True: False}
    kept, cfg, choice = select(candidates(auto, "ridge"), lambda m: m.head_factors,
                               lambda t: first[t], lambda t: fallback[t], lambda t: fell_back[t])
    assert kept is False and not choice.head_factors and choice.criterion == "fallback_shots"
    assert choice.error_with == pytest.approx(0.80) and choice.to_dict()["criterion"] == \
        "fallback_shots"
    fell_back[False] = False  # neither fell back: the first criterion decides
    kept, _, choice = select(candidates(auto, "ridge"), lambda m: m.head_factors,
                             lambda t: first[t], lambda t: fallback[t], lambda t: fell_back[t])
    assert kept is True and choice.criterion == "valid_shots"


def test_select_keeps_a_trained_candidate_over_one_that_never_beat_its_start() -> None:
    """The factor head's training stayed at step 0 (the gate refuses such a model) and is ahead
    by 1.5 standard errors: the head-less training, which learned, is kept. Ahead by more than
    two standard errors, the untrained one is kept (and the gate will say why)."""
    auto = ModelConfig(item_factors=8, head_factors="auto")
    base = np.random.default_rng(0).normal(0.85, 0.05, 60)
    noise = np.random.default_rng(1).normal(0.0, 0.02, 60)
    se = float(noise.std(ddof=1) / np.sqrt(60))
    untrained = {False: False, True: True}

    def run(lead: float):
        errors = {False: base, True: base + noise - noise.mean() - lead}
        return select(candidates(auto, "ridge"), lambda m: m.head_factors, lambda t: errors[t],
                      untrained=lambda t: untrained[t])

    kept, cfg, choice = run(1.5 * se)
    assert kept is False and not cfg.head_factors and not choice.head_factors
    assert choice.rule == "trained over untrained" and choice.to_dict()["rule"] == choice.rule
    assert choice.difference == pytest.approx(-1.5 * se)
    kept, cfg, choice = run(2.5 * se)
    assert kept is True and choice.head_factors and choice.rule == "one standard error"
    # the other way round: the head-less training is the untrained one, the head within noise
    untrained = {False: True, True: False}
    kept, _, choice = run(-0.5 * se)  # the rule keeps the simpler (untrained) one
    assert kept is True and choice.rule == "trained over untrained"
    untrained = {False: True, True: True}  # neither trained: the rule alone decides
    kept, _, choice = run(-0.5 * se)
    assert kept is False and choice.rule == "one standard error"


@pytest.fixture(scope="module")
def lowrank_run(tmp_path_factory):
    """The pipeline's training, evaluation and export on a small low-rank dataset (ratings
    from 8-dimensional user and item factors; item texts carry no signal)."""
    from metarec.data.sources import read_source
    from metarec.data.tables import write_tables
    from metarec.features.build import prepare_features
    from metarec.pipeline.tasks import build_task_sets
    from metarec.pipeline.train import train_meta_model

    root = tmp_path_factory.mktemp("lowrank")
    variant = generate("lowrank", root / "data" / "csv", seed=0, n_users=200, n_items=120,
                       per_user=40)
    raw = merge(variant.params, {
        "data": {"raw_dir": str(root / "data"), "prepared_dir": str(root / "prepared")},
        "features": {"cache_dir": str(root / "cache"), "out_dir": str(root / "features")},
        "tasks": {"out_dir": str(root / "tasks"), "min_ratings": 13},
        "model": {"hidden": [32, 32], "embedding_dim": 8, "text_proj_dim": 8},
        "train": {"out_dir": str(root / "train"), "max_steps": 300, "eval_every": 50,
                  "tasks_per_batch": 16, "progress": False, "lr": 2e-3},
        "evaluation": {"bootstrap_samples": 20, "plot_metrics": [],
                       "out_dir": str(root / "evaluation")},
        "export": {"out_dir": str(root / "export")},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    cfg = config_from_dict(raw)
    assert cfg.model.head_factors == "auto"  # the default
    tables = read_source(cfg.data)
    write_tables(tables, cfg.data.prepared_dir)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=stand_in_encoder)
    build_task_sets(cfg, tables)
    return cfg, train_meta_model(cfg, resume=False, track=False), root / "params.yaml"


def test_low_rank_data_gets_the_head_and_it_is_recorded_and_loaded(lowrank_run) -> None:
    from metarec.pipeline.evaluate import evaluate_models
    from metarec.pipeline.export import export_model
    from metarec.pipeline.train import load_meta_model, train_baseline_models
    from metarec.pipeline.inputs import load_inputs

    cfg, summary, _ = lowrank_run
    choice = summary["head_factors_choice"]
    assert summary["model"] == {"head_factors": True, "item_factors": 8}
    assert choice["head_factors"] and choice["difference"] < -choice["standard_error"]
    assert choice["error_with"] < choice["error_without"]
    on_disk = json.loads((Path(cfg.train.out_dir) / "summary.json").read_text())
    assert on_disk["head_factors_choice"] == choice
    model, learner = load_meta_model(cfg, load_inputs(cfg.features, cfg.tasks).features)
    assert model.head_factors and learner.log_lam.shape[0] == model.head_width + 1
    train_baseline_models(cfg)
    report = evaluate_models(cfg)
    assert report.training["head_factors"] is True
    assert report.training["head_factors_choice"] == choice
    md = (Path(cfg.evaluation.out_dir) / "report.md").read_text()
    assert "model.head_factors auto: with the item-factor head" in md
    assert export_model(cfg) is not None  # the ONNX graph carries the head


def test_a_summary_without_the_choice_is_a_clear_error(lowrank_run, tmp_path) -> None:
    from metarec.pipeline.train import resolved_config

    cfg, summary, _ = lowrank_run
    assert resolved_config(cfg).model.head_factors is True
    old = dict(summary)
    del old["model"]
    (tmp_path / "summary.json").write_text(json.dumps(old))
    moved = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="does not record what model.head_factors 'auto' chose"):
        resolved_config(moved)
    fixed = dataclasses.replace(moved, model=dataclasses.replace(cfg.model, head_factors=False))
    assert resolved_config(fixed) is fixed


def test_the_cli_says_what_auto_chose(lowrank_run, tmp_path) -> None:
    from metarec.cli import main

    cfg, _, params = lowrank_run
    raw = yaml.safe_load(params.read_text())
    raw["train"]["out_dir"] = str(tmp_path / "train")  # leave the fixture's model alone
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["--params", str(tmp_path / "params.yaml"), "train",
                                       "--no-resume", "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert "model.head_factors auto: with the item-factor head" in result.output
