"""Tuning (metarec.tuning, `metarec tune`, the Dagster `tune` job) on the real stack: Optuna on
SQLite, MLflow on a temporary SQLite store, real training on a small synthetic dataset.

The space and its validation against the Config, the reviewed overrides file and what
`load_config` and a training do with it, the test users never loaded, the same trials from
the same seed, the pruner, and the study's MLflow runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from metarec.config import Config, ConfigError, config_from_dict, load_config
from metarec.config.overrides import merge, read_overrides
from metarec.tuning.space import current_values, reference_params, with_params
from tests.synth import SYNTH_PARAMS, write_synthetic_csv
from tests.test_encoders import fake_encoder

SPACE = {
    "meta.ridge_lambda": {"type": "log-float", "low": 0.1, "high": 10.0},
    "meta.rank_loss_weight": {"type": "float", "low": 0.0, "high": 2.0},
    "model.hidden": {"type": "categorical", "choices": [[16, 16], [64, 64]]},
    "train.lr": {"type": "log-float", "low": 1e-4, "high": 3e-3},
}


# --------------------------------------------------------------------------- the space (fast)


@pytest.mark.parametrize(("space", "needle"), [
    ({"meta.inner_lrr": {"type": "float", "low": 0, "high": 1}},
     "'tune.space.meta.inner_lrr': no setting 'meta.inner_lrr'"),
    ({"mta.inner_lr": {"type": "float", "low": 0, "high": 1}}, "no setting 'mta.inner_lr'"),
    ({"meta.learner": {"type": "categorical", "choices": ["ridge", "ridgee"]}},
     "'tune.space.meta.learner.choices[1]' must be one of"),
    ({"meta.inner_steps": {"type": "int", "low": 1, "high": 2.5}},
     "'tune.space.meta.inner_steps.high' must be an integer"),
    ({"meta.inner_steps": {"type": "float", "low": 0.5, "high": 2}},
     "'tune.space.meta.inner_steps.low' must be an integer"),
    ({"meta.inner_lr": {"type": "log-float", "low": 0.0, "high": 1}}, "low > 0"),
    ({"meta.inner_lr": {"type": "float", "low": 1, "high": 0.1}}, "low < high"),
    ({"meta.inner_lr": {"type": "flaot", "low": 0, "high": 1}}, "'tune.space.meta.inner_lr.type'"),
    ({"meta.inner_lr": {"type": "float", "low": 0, "hihg": 1}}, "'tune.space.meta.inner_lr.hihg'"),
    ({"model": {"type": "float", "low": 0, "high": 1}}, "cannot be searched"),
    ({"tune.folds": {"type": "int", "low": 2, "high": 4}}, "cannot be searched"),
    ({"model.hidden": {"type": "categorical", "choices": [[64, "wide"]]}},
     "'tune.space.model.hidden.choices[0][1]' must be an integer"),
])
def test_space_typos_and_bad_ranges_are_named(space, needle):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"tune": {"space": space}})
    assert needle in str(info.value)


def test_trial_settings_apply_and_the_current_settings_are_a_point_of_the_space():
    cfg = config_from_dict({"tune": {"space": SPACE}})
    new = with_params(cfg, {"model.hidden": [16, 16], "train.lr": 1e-3})
    assert new.model.hidden == (16, 16) and new.train.lr == 1e-3
    assert new.meta == cfg.meta and new.tune == cfg.tune
    assert current_values(cfg, cfg.tune.space)["model.hidden"] == [64, 64]
    assert reference_params(cfg, cfg.tune.space)["model.hidden"] == "[64, 64]"  # Optuna's form
    outside = config_from_dict({"train": {"lr": 0.01}, "tune": {"space": SPACE}})
    with pytest.raises(ConfigError, match="'tune.space.train.lr': the current setting 0.01"):
        reference_params(outside, outside.tune.space)
    with pytest.raises(ConfigError, match="'train.lrr'"):
        with_params(cfg, {"train.lrr": 1e-3})


def test_sampler_and_pruner_follow_the_settings():
    import optuna

    from metarec.tuning.study import _pruner, _sampler, direction

    assert isinstance(_pruner(config_from_dict({})), optuna.pruners.MedianPruner)
    halving = config_from_dict({"tune": {"pruner": "halving"}})
    assert isinstance(_pruner(halving), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(_pruner(config_from_dict({"tune": {"pruner": "none"}})),
                      optuna.pruners.NopPruner)
    assert isinstance(_sampler(config_from_dict({}), 0), optuna.samplers.TPESampler)
    ranking = config_from_dict({"tune": {"sampler": "random", "objective": {"metric": "ndcg_at_3"}}})
    assert isinstance(_sampler(ranking, 0), optuna.samplers.RandomSampler)
    assert direction(ranking) == "maximize" and direction(Config()) == "minimize"


def test_only_another_worker_creating_the_tables_is_retried():
    """Opening a storage retries the schema race (PostgreSQL says "already exists", as a
    ProgrammingError or a unique violation) and nothing else: a wrong table or a denied
    permission is raised at once. The race itself: tests/test_tune_scale.py (integration)."""
    import sqlalchemy.exc

    from metarec.tuning.study import _schema_race

    def err(kind, text):
        return kind("CREATE TABLE studies ...", {}, Exception(text))

    assert _schema_race(err(sqlalchemy.exc.ProgrammingError,
                            'type "studydirection" already exists'))
    assert _schema_race(err(sqlalchemy.exc.ProgrammingError, 'relation "studies" already exists'))
    assert _schema_race(err(sqlalchemy.exc.IntegrityError, "duplicate key value violates unique "
                            'constraint "pg_type_typname_nsp_index"'))
    assert not _schema_race(err(sqlalchemy.exc.ProgrammingError,
                                "permission denied for schema public"))


# --------------------------------------------------------------------------- overrides (fast)


def test_overrides_are_used_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.tuned.yaml").write_text("# study: s1\n# trial: 7\nmeta:\n  ridge_lambda: 2.5"
                                         "  # params.yaml: 1.0\n")
    Path("params.yaml").write_text("seed: 3\n")
    assert load_config("params.yaml") == dataclasses.replace(Config(), seed=3)
    Path("params.yaml").write_text("seed: 3\ntune: {use_overrides: true}\n")
    cfg = load_config("params.yaml")
    assert cfg.meta.ridge_lambda == 2.5 and cfg.seed == 3
    assert load_config("params.yaml", overrides=False).meta.ridge_lambda == 1.0
    found = read_overrides("params.tuned.yaml")
    assert found.meta == {"study": "s1", "trial": "7"} and found.flat() == {
        "meta.ridge_lambda": 2.5}
    Path("params.tuned.yaml").write_text("meta:\n  ridge_lamda: 2.5\n")
    with pytest.raises(ConfigError, match=r"params.yaml \+ params.tuned.yaml: .*'meta.ridge_lamda'"):
        load_config("params.yaml")
    Path("params.tuned.yaml").write_text("tune:\n  folds: 2\n")
    with pytest.raises(ConfigError, match="may not set the 'tune' section"):
        load_config("params.yaml")


# --------------------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A synthetic dataset prepared into features and tasks (a fake text encoder), params with
    a small trial budget, Optuna and MLflow on SQLite files of the project."""
    from metarec.data.prepare import prepare_dataset
    from metarec.features.build import prepare_features
    from metarec.pipeline.tasks import build_task_sets

    root = tmp_path_factory.mktemp("tune")
    write_synthetic_csv(root / "data" / "csv")
    raw = merge(SYNTH_PARAMS, {
        "data": {"raw_dir": str(root / "data"), "prepared_dir": str(root / "prepared")},
        "features": {"out_dir": str(root / "features"), "cache_dir": str(root / "cache")},
        "tasks": {"out_dir": str(root / "tasks")},
        "train": {"max_steps": 10, "eval_every": 5, "tasks_per_batch": 8, "progress": False},
        "tracking": {"tracking_uri": f"sqlite:///{root}/mlflow.db"},
        "tune": {"storage": f"sqlite:///{root}/optuna.db", "n_trials": 3, "folds": 2,
                 "out_dir": str(root / "tune"), "overrides_file": str(root / "params.tuned.yaml"),
                 "pruner": "none", "space": SPACE,
                 # the toy's ranking is left to the gate tests: every trial is feasible here
                 "objective": {"constraint_margin": 1.0, "shots": [1, "all"]}}})
    cfg = config_from_dict(raw)
    tables = prepare_dataset(cfg.data)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=fake_encoder)
    build_task_sets(cfg, tables)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    # MLFLOW_TRACKING_URI outranks params.yaml: point it at this project's store (another
    # test or the environment may have set it elsewhere).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", raw["tracking"]["tracking_uri"])
        yield root, raw


def _cfg(raw, **tune) -> Config:
    return config_from_dict(merge(raw, {"tune": tune}))


def _trials(cfg: Config, url: str | None = None) -> list:
    import optuna

    study = optuna.load_study(study_name=cfg.tune.study, storage=url or cfg.tune.storage)
    return study.get_trials()


def test_folds_hold_each_user_out_once_and_cut_supports_along_the_curve(project):
    from metarec.tuning.cv import load_cv_inputs, make_folds, pool_tasks

    root, raw = project
    cfg = config_from_dict(raw)
    pool = pool_tasks(load_cv_inputs(cfg))
    folds = make_folds(pool, 3, (5, 1, "all"), seed=0)
    held = np.concatenate([f.held.user_ids for f in folds])
    full = set(pool.user_ids[pool.support_mask.all(1)])  # fill the width: they only train
    assert sorted(held) == sorted(set(pool.user_ids) - full) and len(set(held)) == len(held)
    for f in folds:
        train, held, stop = set(f.train.user_ids), set(f.held.user_ids), set(f.stop.user_ids)
        # early stopping looks at other users than those scored, of the protocol's kind
        assert not train & held and not stop & held and not stop & train
        assert train | held | stop == set(pool.user_ids)
        assert stop and not stop & full
        assert len(stop) == max(1, round(0.1 * (len(set(pool.user_ids)) - len(full) - len(held))))
        assert f.shots == ("1", "5", "all") and len(f.curve) == 3 * len(f.held)
        sizes = f.curve.support_mask.sum(1).reshape(3, len(f.held))
        whole = f.held.support_mask.sum(1)
        assert (sizes[0] == np.minimum(whole, 1)).all() and (sizes[1] == np.minimum(whole, 5)).all()
        assert (sizes[2] == whole).all()
    again = make_folds(pool, 3, (5, 1, "all"), seed=0)
    assert all((a.curve.support_mask == b.curve.support_mask).all() for a, b in zip(folds, again))
    assert all((a.stop.user_ids == b.stop.user_ids).all() for a, b in zip(folds, again))
    # stop_fraction 0: the former protocol, early stopping on the scored users themselves
    former = make_folds(pool, 3, (5, 1, "all"), seed=0, stop_fraction=0.0)
    for f in former:
        assert (f.stop.user_ids == f.held.user_ids).all()
        assert set(f.train.user_ids) | set(f.held.user_ids) == set(pool.user_ids)
    with pytest.raises(ValueError, match="stop_fraction"):
        make_folds(pool, 3, (5, 1, "all"), seed=0, stop_fraction=1.0)


def test_tune_cli_writes_the_best_trial_for_review_and_logs_every_trial(project):
    root, raw = project
    res = CliRunner().invoke(__import__("metarec.cli", fromlist=["main"]).main,
                             ["--params", str(root / "params.yaml"), "tune"])
    assert res.exit_code == 0, res.output
    assert "paired difference (best - current) over" in res.output
    cfg = load_config(root / "params.yaml", overrides=False)
    trials = _trials(cfg)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    reference = trials[0]
    assert reference.user_attrs["reference"] is True  # the current settings come first
    assert reference.params["model.hidden"] == "[64, 64]"
    assert reference.params["train.lr"] == cfg.train.lr
    best = min(trials, key=lambda t: t.value)
    # The file holds the best trial's changed settings, its number and score as comments.
    tuned = read_overrides(cfg.tune.overrides_file)
    assert tuned.meta["trial"] == str(best.number) and tuned.meta["study"] == "metarec"
    assert tuned.meta["cv_mae"].startswith(f"{best.value:.5f} ± ")
    expected = {k: v for k, v in best.params.items() if v != reference.params[k]}
    flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in tuned.flat().items()}
    assert flat == expected
    # Paired difference: the per-user scores of best and reference, user by user.
    diff = np.array(best.user_attrs["per_task"]) - np.array(reference.user_attrs["per_task"])
    report = json.loads((root / "tune" / "metarec" / "report.json").read_text())
    assert report["difference"] == pytest.approx(diff.mean())
    assert report["difference_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)))
    # MLflow: the study's run with the outcome, one nested run per trial with its folds.
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment)
                               .experiment_id])
    (study_run,) = [r for r in runs if r.data.tags.get("metarec.kind") == "tuning-study"]
    trial_runs = [r for r in runs if r.data.tags.get("metarec.kind") == "tuning-trial"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == [0, 1, 2]
    for run in trial_runs:
        assert run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
        assert set(SPACE) <= set(run.data.params) and run.data.metrics["duration_s"] > 0
        folds = client.get_metric_history(run.info.run_id, "fold_mae")
        assert sorted(m.step for m in folds) == [0, 1]
        assert run.data.metrics["cv_mae"] == pytest.approx(np.mean(
            [t for t in trials if t.number == int(run.data.tags["optuna.trial"])][0]
            .user_attrs["per_task"]))
    assert study_run.data.metrics["best_cv_mae"] == pytest.approx(best.value)
    assert study_run.data.tags["best_trial"] == str(best.number)
    arts = {a.path for a in client.list_artifacts(study_run.info.run_id, "tuning/overrides")}
    assert arts == {"tuning/overrides/params.tuned.yaml"}
    # Run again: the study is complete, nothing is run, the report is the same.
    again = CliRunner().invoke(__import__("metarec.cli", fromlist=["main"]).main,
                               ["--params", str(root / "params.yaml"), "tune", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output.splitlines()[-1])["ran"] == []


def test_a_retrain_with_overrides_records_them_in_mlflow(project, tmp_path, monkeypatch):
    from metarec.pipeline.train import train_meta_model

    root, raw = project
    monkeypatch.chdir(tmp_path)
    Path("params.tuned.yaml").write_text("# study: s9\n# trial: 4\nmeta:\n  ridge_lambda: 3.0\n")
    params = merge(raw, {"train": {"out_dir": str(tmp_path / "train")},
                         "tune": {"use_overrides": True, "overrides_file": "params.tuned.yaml"}})
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config("params.yaml")
    assert cfg.meta.ridge_lambda == 3.0
    summary = train_meta_model(cfg, resume=False)
    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(summary["mlflow_run_id"])
    assert json.loads(run.data.tags["tune_overrides"]) == {"meta.ridge_lambda": 3.0}
    assert run.data.tags["tune_study"] == "s9" and run.data.tags["tune_trial"] == "4"
    assert run.data.params["meta.ridge_lambda"] == "3.0"
    # Without use_overrides the file is ignored, and the run says so.
    Path("params.yaml").write_text(yaml.safe_dump(merge(params, {"tune": {"use_overrides":
                                                                          False}})))
    plain = train_meta_model(load_config("params.yaml"), resume=False)
    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(plain["mlflow_run_id"])
    assert run.data.tags["tune_overrides"] == "none"
    assert run.data.params["meta.ridge_lambda"] == "1.0"


def test_tuning_never_loads_the_test_users(project, tmp_path):
    """The tuning code gets no test tasks: with the test sets gone from disk it runs as before,
    and the tasks it pools are the training and validation users only."""
    from metarec.data.tasks import load_tasks
    from metarec.tuning.cv import load_cv_inputs, pool_tasks
    from metarec.tuning.study import run_worker

    root, raw = project
    shutil.copytree(root / "tasks", tmp_path / "tasks")
    test_users = load_tasks(root / "tasks", ["test"])["test"].user_ids
    for path in (tmp_path / "tasks").glob("test*.npz"):
        path.unlink()
    cfg = config_from_dict(merge(raw, {"tasks": {"out_dir": str(tmp_path / "tasks")}, "tune": {
        "storage": f"sqlite:///{tmp_path}/optuna.db", "n_trials": 1, "study": "no-test"}}))
    inputs = load_cv_inputs(cfg)
    assert set(inputs.sets) == {"train", "valid"} and inputs.scenarios == []
    assert not set(pool_tasks(inputs).user_ids) & set(test_users)
    result = run_worker(cfg)
    assert result.ran == [0] and result.counts == {"COMPLETE": 1}


def test_same_seed_same_storage_kind_gives_the_same_trials(project, tmp_path):
    from metarec.tuning.study import run_worker

    root, raw = project
    runs = []
    for name in ("a", "b"):
        cfg = _cfg(raw, storage=f"sqlite:///{tmp_path}/{name}.db", n_trials=3, seed=11,
                   study="seeded")
        run_worker(cfg)
        runs.append([(t.params, t.value) for t in _trials(cfg)])
    assert runs[0] == runs[1] and len({json.dumps(p) for p, _ in runs[0]}) == 3
    other = _cfg(raw, storage=f"sqlite:///{tmp_path}/c.db", n_trials=2, seed=12,
                 study="seeded")
    run_worker(other)
    assert [t.params for t in _trials(other)][1:] != [p for p, _ in runs[0]][1:]


def test_the_median_pruner_stops_trials_after_a_fold(project, tmp_path):
    from metarec.tuning.study import run_worker

    root, raw = project
    cfg = _cfg(raw, storage=f"sqlite:///{tmp_path}/p.db", n_trials=6, study="pruned",
               pruner="median", pruner_startup_trials=1)
    run_worker(cfg)
    trials = _trials(cfg)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and trials[0].state.name == "COMPLETE"
    for t in pruned:  # stopped after the first fold: its score was above the median there
        assert list(t.intermediate_values) == [0]
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    tags = {r.data.tags["optuna.trial"]: r.data.tags["optuna.state"] for r in client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        f"tags.`optuna.study` = '{cfg.tune.study}' and tags.`metarec.kind` = 'tuning-trial'")}
    assert {str(t.number) for t in pruned} <= {k for k, v in tags.items() if v == "PRUNED"}


def test_tuning_study_asset_and_the_tune_job(project, monkeypatch):
    import dagster as dg

    from orchestration.assemble import build_definitions
    from orchestration.resources import local_resources
    from orchestration.tune_assets import tuning_study

    root, raw = project
    monkeypatch.chdir(root)
    params = merge(raw, {"tune": {"study": "dagster", "n_trials": 2}})
    (root / "dagster.yaml").write_text(yaml.safe_dump(params))
    result = dg.materialize([tuning_study], resources=local_resources(
        str(root), params=str(root / "dagster.yaml")))
    assert result.success
    (mat,) = result.asset_materializations_for_node("tuning_study")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["study"] == "dagster" and meta["best_trial"] in (0, 1)
    assert set(meta["best_params"]) == set(SPACE) and "best_cv_mae" in meta
    assert Path(meta["overrides_file"]).exists()
    defs = build_definitions(str(root / "dagster.yaml"))
    tune_keys = {k.to_user_string() for k in defs.resolve_job_def("tune").asset_layer
                 .executable_asset_keys}
    retrain_keys = {k.to_user_string() for k in defs.resolve_job_def("retrain").asset_layer
                    .executable_asset_keys}
    assert "tuning_study" in tune_keys and {"cold_start_tasks", "interactions"} <= tune_keys
    assert "tuning_study" not in retrain_keys and "registered_model" not in tune_keys
