"""Tuning beyond one machine: two `metarec tune --worker` processes share one study in Optuna's
RDB storage on PostgreSQL (the server tests/test_scale.py starts), with MLflow on PostgreSQL
too; no trial is lost or run twice, and a later `metarec tune` reports the study.

Marked `integration` (a real PostgreSQL server from Debian's packages, psycopg2 from the
`scale` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from metarec.config.overrides import merge
from tests.conftest import REPO
from tests.test_scale import _run, postgres  # noqa: F401  (the module-scoped server fixture)
from tests.synth import write_synthetic_csv
from tests.test_tuning import SPACE

WORKER_BOUND_S = 600  # two workers, six small trials: minutes at most on 2 cores


def _workspace(tmp_path: Path, raw: dict) -> tuple[Any, Path, dict[str, str]]:
    """Prepare the synthetic dataset's features and tasks for ``raw``, write its params file;
    returns the Config, that file and the environment of a `metarec tune` worker process."""
    from metarec.config import config_from_dict
    from metarec.data.prepare import prepare_dataset
    from metarec.features.build import prepare_features
    from metarec.pipeline.tasks import build_task_sets
    from tests.test_encoders import fake_encoder

    write_synthetic_csv(tmp_path / "data" / "csv")
    cfg = config_from_dict(raw)
    tables = prepare_dataset(cfg.data)
    prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, encode_fn=fake_encoder)
    build_task_sets(cfg, tables)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return cfg, params, env


@pytest.mark.integration
def test_two_workers_share_one_study_on_postgres(postgres, tmp_path):  # noqa: F811
    pytest.importorskip("psycopg2", reason="needs the `scale` extra (psycopg2)")
    import mlflow
    import optuna

    from tests.synth import SYNTH_PARAMS

    for db in ("optuna", "mlflow_tune"):
        _run(["psql", f"{postgres}/postgres", "-q", "-c", f"CREATE DATABASE {db}"])
    pg = postgres.replace("postgresql://", "postgresql+psycopg2://")
    storage, tracking = f"{pg}/optuna", f"{pg}/mlflow_tune"
    raw = merge(SYNTH_PARAMS, {
        "data": {"raw_dir": str(tmp_path / "data"), "prepared_dir": str(tmp_path / "prepared")},
        "features": {"out_dir": str(tmp_path / "features"), "cache_dir": str(tmp_path / "c")},
        "tasks": {"out_dir": str(tmp_path / "tasks")},
        "train": {"max_steps": 10, "eval_every": 5, "tasks_per_batch": 8, "progress": False},
        "tracking": {"tracking_uri": tracking},
        "tune": {"study": "shared", "storage": storage, "n_trials": 6, "folds": 2,
                 "pruner": "none", "out_dir": str(tmp_path / "tune"), "space": SPACE,
                 "overrides_file": str(tmp_path / "params.tuned.yaml"),
                 "objective": {"constraint_margin": 1.0, "shots": [1, "all"]}}})
    cfg, params, env = _workspace(tmp_path, raw)
    cmd = [sys.executable, "-m", "metarec.cli", "--params", str(params), "tune", "--worker",
           "--json"]
    start = time.monotonic()
    workers = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=WORKER_BOUND_S) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    ran = [json.loads(out.strip().splitlines()[-1])["ran"] for out, _ in outputs]
    print(f"\ntwo workers: trials {ran} in {time.monotonic() - start:.0f} s")

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    numbers = sorted(t.number for t in trials)
    # Every trial ran once, by one worker: none lost, none twice, none left running.
    assert sorted(ran[0] + ran[1]) == numbers == list(range(len(trials)))
    assert not set(ran[0]) & set(ran[1]) and ran[0] and ran[1]
    assert 6 <= len(trials) <= 7  # at most one trial started by both workers at the very end
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert [t.number for t in trials if t.user_attrs.get("reference")] == [0]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    # One MLflow run per trial, nested under the one study run, tagged with its worker.
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment)
                               .experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("metarec.kind") == "tuning-study"]
    children = [r for r in runs if r.data.tags.get("metarec.kind") == "tuning-trial"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == numbers
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert len({r.data.tags["metarec.worker"] for r in children}) == 2

    # A later `metarec tune` finds the study complete, runs nothing and writes the report.
    done = subprocess.run([sys.executable, "-m", "metarec.cli", "--params", str(params), "tune",
                           "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=WORKER_BOUND_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ran"] == [] and report["report"]["best"] == study.best_trial.number
    assert (tmp_path / "params.tuned.yaml").exists()


OPENER = """
import sys, time
from metarec.config import config_from_dict
from metarec.tuning.study import storage
from tests.synth import SYNTH_PARAMS
cfg = config_from_dict(SYNTH_PARAMS)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start at one instant
store = storage(cfg, sys.argv[1])
print(store.create_new_study([], None))
"""


@pytest.mark.integration
def test_workers_opening_an_empty_database_together_all_get_the_storage(postgres):  # noqa: F811
    """Workers started at once on an empty database race to create Optuna's tables; every one
    must come away with a working storage (PostgreSQL once raised "type studydirection already
    exists" in the loser, failing the worker). Processes, as workers are, on fresh databases."""
    pytest.importorskip("psycopg2", reason="needs the `scale` extra (psycopg2)")
    pg = postgres.replace("postgresql://", "postgresql+psycopg2://")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    openers, databases = 4, 4
    for i in range(databases):
        _run(["psql", f"{postgres}/postgres", "-q", "-c", f"CREATE DATABASE race{i}"])
        at = time.time() + 8.0  # time enough for every process to import
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, f"{pg}/race{i}", str(at)],
                                  env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(openers)]
        outs = [p.communicate(timeout=WORKER_BOUND_S) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, f"race{i}: {err[-2000:]}"
        assert len({out.strip() for out, _ in outs}) == openers  # one new study each


@pytest.mark.integration
def test_a_dead_workers_trial_is_run_again(tmp_path):
    """A worker killed mid-trial stops its heartbeat; the next worker fails that trial and runs
    it again (the same settings), so the study loses no trial."""
    import optuna

    from metarec.tuning.study import run_worker
    from tests.synth import SYNTH_PARAMS

    storage = f"sqlite:///{tmp_path}/optuna.db"
    raw = merge(SYNTH_PARAMS, {
        "data": {"raw_dir": str(tmp_path / "data"), "prepared_dir": str(tmp_path / "prepared")},
        "features": {"out_dir": str(tmp_path / "features"), "cache_dir": str(tmp_path / "c")},
        "tasks": {"out_dir": str(tmp_path / "tasks")},
        # long enough a trial to be killed in the middle of it
        "train": {"max_steps": 300, "eval_every": 50, "patience": 1000, "tasks_per_batch": 8,
                  "progress": False},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "tune": {"storage": storage, "n_trials": 2, "folds": 2, "pruner": "none",
                 "heartbeat_s": 1, "out_dir": str(tmp_path / "tune"), "space": SPACE,
                 "objective": {"constraint_margin": 1.0, "shots": ["all"]}}})
    cfg, params, env = _workspace(tmp_path, raw)
    doomed = subprocess.Popen([sys.executable, "-m", "metarec.cli", "--params", str(params),
                               "tune", "--worker"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WORKER_BOUND_S
        while True:  # until its first trial (the reference) is running
            time.sleep(1)
            try:
                running = [t for t in optuna.load_study(study_name="metarec", storage=storage)
                           .get_trials() if t.state.name == "RUNNING"]
            except KeyError:  # the study is not created yet
                running = []
            if running or doomed.poll() is not None or time.monotonic() > deadline:
                break
        assert running, "the worker never started a trial"
        time.sleep(2)  # mid-trial: two folds of 300 training steps take far longer
    finally:
        doomed.kill()
        doomed.wait(timeout=30)
    time.sleep(3)  # past the grace period (2 x heartbeat_s) of its last heartbeat
    result = run_worker(cfg)  # a second worker, same study
    trials = optuna.load_study(study_name="metarec", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2, states
    retry = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("reference")]
    assert len(retry) == 1 and retry[0].params == trials[0].params
    assert result.ran == [t.number for t in trials[1:]]
