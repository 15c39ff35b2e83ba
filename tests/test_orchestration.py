"""Dagster: the Definitions load, the schedule and sensor evaluate, and the asset graph runs
in-process on small data with real GX, DVC and the language model; a failing data contract
stops everything downstream."""

from __future__ import annotations

import json
import shutil
import subprocess

import dagster as dg
import pytest
import yaml

from metarec.config import load_config
from metarec.data.fetch import fetch
from orchestration.automation import build_data_sensor, build_schedule
from orchestration.assemble import build_definitions
from orchestration.run import run_retrain
from tests.conftest import REPO
from tests.synth import SYNTH_PARAMS, write_synthetic_csv

DATA_ASSETS = {"raw_dataset", "interactions", "users", "items", "item_text_embeddings",
               "features", "cold_start_tasks"}
MODEL_ASSETS = {"meta_model", "baseline_models", "evaluation_report", "onnx_model",
                "registered_model"}


def test_definitions_load(monkeypatch):
    monkeypatch.chdir(REPO)
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert DATA_ASSETS | MODEL_ASSETS | {"feedback_events", "tuning_study", "item_catalog"} == keys
    retrain = defs.resolve_job_def("retrain")
    assert "item_catalog" not in {n.name for n in retrain.graph.node_defs}  # never retrains
    assert defs.resolve_job_def("tune") is not None  # its assets: tests/test_tuning.py
    assert defs.resolve_job_def("add_items") is not None
    assert defs.get_sensor_def("new_items_sensor") is not None
    # Ingesting is its own job (it moves data.dvc; the sensor then starts retrain).
    ingest = defs.resolve_job_def("ingest").asset_layer.executable_asset_keys
    retrain_keys = defs.resolve_job_def("retrain").asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in ingest} == {"feedback_events"}
    assert "feedback_events" not in {k.to_user_string() for k in retrain_keys}
    cfg = load_config(REPO / "params.yaml")
    assert defs.get_schedule_def("weekly_retrain").cron_schedule == cfg.schedule.retrain_cron
    assert defs.get_schedule_def("feedback_ingest").cron_schedule == cfg.schedule.ingest_cron
    assert defs.get_sensor_def("new_data_sensor") is not None


def test_library_never_imports_dagster():
    offenders = [str(p) for p in (REPO / "metarec").rglob("*.py")
                 if any(line.strip().startswith(("import dagster", "from dagster",
                                                 "import orchestration", "from orchestration"))
                        for line in p.read_text().splitlines())]
    assert offenders == []


def test_schedule_evaluates():
    cfg = load_config(REPO / "params.yaml").schedule
    schedule = build_schedule(cfg)
    ctx = dg.build_schedule_context(scheduled_execution_time=None)
    data = schedule.evaluate_tick(ctx)
    assert data.run_requests and len(data.run_requests) == 1
    assert schedule.cron_schedule == "0 3 * * 1"


def test_sensor_fires_once_per_dataset_hash(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: aaa.dir\n  path: data\n")
    sensor = build_data_sensor(load_config(REPO / "params.yaml").schedule, str(dvc_file))
    first = sensor.evaluate_tick(dg.build_sensor_context(cursor=None))
    assert [r.run_key for r in first.run_requests] == ["aaa.dir"] and first.cursor == "aaa.dir"
    same = sensor.evaluate_tick(dg.build_sensor_context(cursor="aaa.dir"))
    assert not same.run_requests and "unchanged" in same.skip_message
    dvc_file.write_text("outs:\n- md5: bbb.dir\n  path: data\n")
    changed = sensor.evaluate_tick(dg.build_sensor_context(cursor="aaa.dir"))
    assert [r.run_key for r in changed.run_requests] == ["bbb.dir"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temporary git + DVC project; the test writes its params.yaml and data."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def _write_params(project, overrides):
    (project / "params.yaml").write_text(yaml.safe_dump(overrides))
    return load_config(project / "params.yaml")


def test_failing_data_contract_blocks_downstream(project, fixtures):
    # The tiny ML-100K fixture has far too few users with 13..100 ratings for the task protocol.
    cfg = _write_params(project, {"data": {"dataset": "ml-100k"}})
    fetch(cfg.data, path=fixtures / "ml100k_recbole", root=project)
    run = run_retrain("params.yaml", dg.DagsterInstance.ephemeral())
    assert not run.success
    assert run.checks["interactions:data_contract"] is False
    assert not run.gate_blocked  # a data failure is an error, not a gate verdict
    assert {"interactions", "users", "items", "raw_dataset"} <= set(run.materialized)
    assert not {"features", "cold_start_tasks", "item_text_embeddings"} & set(run.materialized)
    assert not (project / "artifacts" / "features").exists()


def test_retrain_registers_then_gate_blocks_a_bad_model(project):
    """Whole graph on synthetic data: a good model is registered as challenger and promoted by
    the `promote` job; a broken retrain then fails the gate and leaves the registry as it was."""
    from metarec import registry

    cfg = _write_params(project, SYNTH_PARAMS)
    fetch(cfg.data, path=write_synthetic_csv(project / "incoming"), root=project)
    shutil.rmtree(project / "incoming")
    instance = dg.DagsterInstance.ephemeral()
    run = run_retrain("params.yaml", instance)
    assert run.success, run
    assert DATA_ASSETS | MODEL_ASSETS == set(run.materialized)
    # The model stages wrote into the run's own folders, and all name one trained model.
    own = project / "artifacts" / "runs" / run.run_id
    assert not (project / "artifacts/train/summary.json").exists()
    summary = json.loads((own / "train/summary.json").read_text())
    export_meta = json.loads((own / "export/metadata.json").read_text())
    assert summary["model_sha256"] == export_meta["extra"]["model_sha256"]
    assert all(run.checks.values()) and len(run.checks) == 5  # 3 contracts, gate, parity
    reg = run.materialized["registered_model"]
    assert reg["version"] == "1" and reg["alias"] == "challenger"
    assert reg["data_hash"] == run.materialized["raw_dataset"]["dvc_md5"]
    # One MLflow run per training: opened by meta_model, completed by registered_model.
    assert run.materialized["meta_model"]["mlflow_run_id"] == reg["mlflow_run_id"]
    assert float(run.materialized["onnx_model"]["parity_max_abs_err"]) <= 1e-4
    gate_lines = run.check_details["evaluation_report:gate"]
    assert gate_lines[0].startswith("all ") and "(paired_bootstrap rule)" in gate_lines[0]
    report = json.loads((own / "evaluation/report.json").read_text())
    assert report["meta_training_gain"] is True
    assert report["training"]["model_sha256"] == summary["model_sha256"]
    # the prior's calibration travels from the training summary to the report
    assert isinstance(summary["prior_shift"], float)
    assert report["training"]["prior_shift"] == summary["prior_shift"]
    assert float(run.materialized["meta_model"]["prior_shift"]) == summary["prior_shift"]
    assert "Prior calibrated after training" in (own / "evaluation/report.md").read_text()
    # model.head_factors auto: the choice travels from the training to the report and the UI
    chosen = summary["head_factors_choice"]
    assert chosen["head_factors"] == summary["model"]["head_factors"]
    assert report["training"]["head_factors_choice"] == chosen
    assert run.materialized["meta_model"]["head_factors"] == str(chosen["head_factors"])
    assert "mae" not in report["curves"]["test"]["most_pop"]["all"]  # scores, not ratings
    # What the split and the task build dropped travels from the tasks manifest to the report.
    manifest = json.loads((project / "artifacts/tasks/manifest.json").read_text())
    assert report["dropped"] == manifest["dropped"] and report["dropped"]
    assert all(set(v) == {"users", "ratings"} for v in report["dropped"].values())
    assert set(report["curve_differences"]["test"]) == {"user_mean", "item_mean", "global",
                                                        "finetune", "most_pop", "item_knn"}
    assert "full_recall_at_10" in report["curve_differences"]["test"]["item_knn"]["all"]
    assert "## Gate: PASSED" in (own / "evaluation/report.md").read_text()
    tracking = load_config("params.yaml").tracking
    assert registry.aliases(tracking) == {"challenger": 1}
    (version,) = registry.list_models(tracking)
    assert version.data_hash == reg["data_hash"]
    assert version.run_id == summary["mlflow_run_id"]
    tags = registry.client(tracking).get_model_version(tracking.registered_model, "1").tags
    assert tags["dagster_run_id"] == run.run_id
    first_run_files = {p: p.read_bytes() for p in own.rglob("*") if p.is_file()}

    defs = build_definitions()
    promoted = defs.resolve_job_def("promote").execute_in_process(instance=instance)
    assert promoted.success
    assert registry.aliases(tracking)["champion"] == 1
    # the registered params.json holds the resolved configuration, never "auto"
    from metarec.training.warmstart import load_champion

    assert load_champion(tracking).params["model"]["head_factors"] is chosen["head_factors"]

    broken = {**SYNTH_PARAMS, "train": {**SYNTH_PARAMS["train"], "max_steps": 1, "lr": 1e-9}}
    _write_params(project, broken)
    run = run_retrain("params.yaml", instance)
    assert not run.success
    assert run.checks["evaluation_report:gate"] is False
    assert run.gate_blocked  # `metarec pipeline run` reports it and exits 0 unless --strict
    reasons = run.check_details["evaluation_report:gate"]
    assert reasons and all(" vs " in r or "meta_training_gain" in r or
                           r == "champion version 1 re-evaluated on this run's test users"
                           for r in reasons), reasons
    assert any("vs champion" in r for r in reasons)  # compared on this run's test users
    assert "## Gate: FAILED" in (project / "artifacts/runs" / run.run_id /
                                 "evaluation/report.md").read_text()
    assert not {"onnx_model", "registered_model"} & set(run.materialized)
    assert {p: p.read_bytes() for p in own.rglob("*") if p.is_file()} == first_run_files
    assert [v.version for v in registry.list_models(tracking)] == [1]
    assert registry.aliases(tracking)["champion"] == 1


def test_a_second_pipeline_run_in_the_workspace_is_refused(project):
    """Two `metarec pipeline run` at once in one checkout: the second is refused at once,
    naming the first (pid, Dagster run), and the first registers its own model with its own
    lineage. The params file named on the CLI reaches every asset: there is no params.yaml
    at all, and the changed value is what MLflow records."""
    import os
    import sys
    import time

    import mlflow
    from click.testing import CliRunner

    from metarec import registry
    from metarec.cli import main
    from metarec.pipeline.workspace import read_holder

    changed = {**SYNTH_PARAMS, "train": {**SYNTH_PARAMS["train"], "lr": 0.00037}}
    (project / "other.yaml").write_text(yaml.safe_dump(changed))
    cfg = load_config(project / "other.yaml")
    fetch(cfg.data, path=write_synthetic_csv(project / "incoming"), root=project)
    shutil.rmtree(project / "incoming")
    assert not (project / "params.yaml").exists()
    args = ["--params", "other.yaml", "pipeline", "run", "--dagster-home",
            str(project / ".dagster")]
    first = subprocess.Popen([sys.executable, "-m", "metarec.cli", *args], cwd=project,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (holder := read_holder(project)) is None:
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.2)
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 1 and "is busy" in second.output, second.output
        assert f"pid {first.pid}" in second.output
        assert f"Dagster run {holder['dagster_run_id']}" in second.output
    finally:
        output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output
    assert f"run {holder['dagster_run_id']}: success" in output

    own = project / "artifacts" / "runs" / holder["dagster_run_id"]
    summary = json.loads((own / "train" / "summary.json").read_text())
    run = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert float(run.data.params["train.lr"]) == 0.00037
    assert run.data.params["meta.learner"] == cfg.meta.learner
    (version,) = registry.list_models(cfg.tracking)
    assert version.run_id == summary["mlflow_run_id"]
    tags = registry.client(cfg.tracking).get_model_version(cfg.tracking.registered_model,
                                                           str(version.version)).tags
    assert tags["dagster_run_id"] == holder["dagster_run_id"]


def test_retrain_runs_queue_one_at_a_time(tmp_path, monkeypatch):
    """The job carries the tag the instances limit to one run at a time: the local instance
    `metarec pipeline run` creates (`dagster dev` queues by it) and both deploy files."""
    from dagster._core.instance.config import dagster_instance_config

    from orchestration.automation import RETRAIN_TAG, retrain_job
    from orchestration.run import instance_for

    ((key, value),) = RETRAIN_TAG.items()
    assert retrain_job.tags[key] == value
    limit = [{"key": key, "limit": 1}]
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    local = instance_for(str(tmp_path / "home")).get_concurrency_config().run_queue_config
    assert local.tag_concurrency_limits == limit
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME",
                 "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "5432")
    for kind in ("docker", "k8s"):
        cfg, _ = dagster_instance_config(str(REPO / "orchestration/deploy" / kind), "dagster.yaml")
        assert cfg["run_queue"]["tag_concurrency_limits"] == limit


def test_config_resource_reads_the_file_once_per_run(tmp_path):
    """Every asset of a run gets the configuration the run started with: the params file is
    read when the resource is set up, not again by each asset."""
    from orchestration.resources import MetarecConfig

    params = tmp_path / "p.yaml"
    params.write_text("seed: 1\n")
    resource = MetarecConfig(params=str(params))
    resource.setup_for_execution(dg.build_init_resource_context())
    first = resource.load()
    params.write_text("seed: 2\n")  # edited while the run is going
    assert resource.load() is first and first.seed == 1

