"""Scaling out: the production Dagster instance files (Postgres storage, Docker and Kubernetes
launchers, the GPU request of the training step) validated through Dagster's own config schemas
and launcher classes; the DVC remote settings from the environment.

Marked `integration`: a real PostgreSQL server (Debian's packages) on loopback holds MLflow's
backend store and Dagster's instance storage, a local S3 endpoint (moto) holds MLflow's artifacts
and a DVC remote; the retrain graph runs on tiny synthetic data against them and the registry
is read back afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "orchestration" / "deploy"
SCALE = "needs the `scale` extra: pip install -e '.[scale]'"
PG_ENV = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "5433",
          "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "secret",
          "DAGSTER_PG_DB": "dagster"}
LAUNCH_ENV = {"METAREC_IMAGE": "registry.example/metarec:1.0", "METAREC_DOCKER_NETWORK": "ml",
              "METAREC_K8S_NAMESPACE": "ml", "METAREC_K8S_SERVICE_ACCOUNT": "dagster",
              "METAREC_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
              "METAREC_K8S_PG_SECRET": "dagster-postgresql"}


@pytest.fixture
def deploy_env(monkeypatch):
    for key, value in {**PG_ENV, **LAUNCH_ENV}.items():
        monkeypatch.setenv(key, value)


# --------------------------------------------------------------------------- config (fast)


def test_docker_instance_validates_and_gives_the_run_container_the_gpus(deploy_env):
    pytest.importorskip("dagster_docker", reason=SCALE)
    import docker
    from dagster._serdes import ConfigurableClassData
    from dagster_docker import DockerRunLauncher

    from orchestration.deploy.check import validate_instance_yaml

    path = DEPLOY / "docker" / "dagster.yaml"
    settings = validate_instance_yaml(path)
    assert settings.postgres == {"hostname": "db.internal", "port": 5433,
                                 "username": "dagster", "db_name": "dagster"}
    assert settings.run_launcher == "dagster_docker.DockerRunLauncher"
    assert settings.max_concurrent_runs == 4  # retrain: 1, by tag (test_orchestration)
    raw = yaml.safe_load(path.read_text())["run_launcher"]
    launcher = ConfigurableClassData(raw["module"], raw["class"],
                                     yaml.safe_dump(raw["config"])).rehydrate(DockerRunLauncher)
    assert launcher.image == LAUNCH_ENV["METAREC_IMAGE"] and launcher.networks == ["ml"]
    assert {"METAREC_ENV=production", "MLFLOW_TRACKING_URI", "DAGSTER_PG_PASSWORD",
            "METAREC_DVC_REMOTE_URL"} <= set(launcher.env_vars)
    # docker-py turns container_kwargs into the container's HostConfig: all GPUs requested.
    host = docker.types.HostConfig(version="1.44", **launcher.container_kwargs)
    (request,) = host["DeviceRequests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]


def test_k8s_instance_validates_and_builds_a_run_launcher(deploy_env, tmp_path):
    pytest.importorskip("dagster_k8s", reason=SCALE)
    from dagster_k8s import K8sRunLauncher

    from orchestration.deploy.check import validate_instance_yaml

    settings = validate_instance_yaml(DEPLOY / "k8s" / "dagster.yaml")
    assert settings.run_launcher == "dagster_k8s.K8sRunLauncher"
    cfg = settings.launcher_config
    assert cfg["job_image"] == LAUNCH_ENV["METAREC_IMAGE"] and cfg["load_incluster_config"]
    assert cfg["postgres_password_secret"] == "dagster-postgresql"
    # Outside a cluster: the same configuration with a kubeconfig instead of in-cluster config.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "t"}}]}))
    launcher = K8sRunLauncher(**{**cfg, "load_incluster_config": False,
                                 "kubeconfig_file": str(kubeconfig)})
    assert launcher.job_namespace == "ml" and launcher.image_pull_policy == "IfNotPresent"
    assert launcher.env_config_maps == ["metarec-env"]


def test_missing_variable_is_named(monkeypatch):
    pytest.importorskip("dagster_docker", reason=SCALE)
    from orchestration.deploy.check import InstanceConfigError, main, validate_instance_yaml

    for key, value in {**PG_ENV, **LAUNCH_ENV}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(InstanceConfigError, match="DAGSTER_PG_HOST"):
        validate_instance_yaml(DEPLOY / "docker" / "dagster.yaml")
    assert main([str(DEPLOY / "docker" / "dagster.yaml")]) == 1


def test_sqlite_instance_is_refused(tmp_path):
    pytest.importorskip("dagster_postgres", reason=SCALE)
    from orchestration.deploy.check import InstanceConfigError, validate_instance_yaml

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.raises(InstanceConfigError, match="storage must be postgres"):
        validate_instance_yaml(tmp_path / "dagster.yaml")


def test_k8s_executor_gives_the_training_pod_one_gpu(monkeypatch):
    pytest.importorskip("dagster_k8s", reason=SCALE)
    from dagster_k8s.job import (DagsterK8sJobConfig, construct_dagster_k8s_job,
                                 get_user_defined_k8s_config)

    from orchestration.deploy.definitions import build_deploy_definitions

    monkeypatch.chdir(REPO)
    job = build_deploy_definitions("params.yaml", executor="k8s").resolve_job_def("retrain")
    assert job.executor_def.name == "k8s"
    tags = {name: job.graph.node_named(name).tags for name in ("meta_model", "baseline_models")}
    gpu = get_user_defined_k8s_config(tags["meta_model"])
    assert gpu.container_config["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "dagster-k8s/config" not in tags["baseline_models"]
    k8s_job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="registry.example/metarec:1.0", dagster_home="/opt/dh",
                            instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_step"], job_name="meta-model-step",
        user_defined_k8s_config=gpu)
    (container,) = k8s_job.spec.template.spec.containers
    assert container.resources.limits == {"nvidia.com/gpu": "1"}  # a k8s quantity
    with pytest.raises(ValueError, match="METAREC_EXECUTOR"):
        build_deploy_definitions("params.yaml", executor="slurm")


def test_remote_settings_from_environment():
    from metarec.dvc import DEFAULT_REMOTE_NAME, RemoteSettings, remote_from_env

    assert remote_from_env({}) is None  # default: DVC's local cache only
    assert remote_from_env({"METAREC_DVC_REMOTE_URL": "s3://b/p",
                            "METAREC_DVC_REMOTE_ENDPOINT": "http://127.0.0.1:9000"}) == \
        RemoteSettings("s3://b/p", "http://127.0.0.1:9000", DEFAULT_REMOTE_NAME)
    with pytest.raises(ValueError, match="METAREC_DVC_REMOTE_URL"):
        remote_from_env({"METAREC_DVC_REMOTE_URL": "bucket-without-scheme"})


# --------------------------------------------------------------------------- real servers

BOUND_S = 90  # the longest any server may take to come up


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: run its tools as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BOUND_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip() or proc.stdout.strip()}")


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth) with databases dagster and
    mlflow; yields its base URL postgresql://postgres@127.0.0.1:PORT."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="metarec-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    opts = f"-k {sock} -p {port} -h 127.0.0.1"
    ctl = [str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-t", str(BOUND_S)]
    url = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        _run(_as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8"]))
        _run(_as_postgres([*ctl, "-l", str(root / "log"), "-o", f"'{opts}'", "start"]))
        for db in ("dagster", "mlflow"):
            _run(["psql", f"{url}/postgres", "-q", "-c", f"CREATE DATABASE {db}"])
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            _run(_as_postgres([*ctl, "-m", "fast", "stop"]))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with buckets `mlflow` and `dvc`; yields its endpoint URL.
    Sets dummy AWS credentials for this module (MLflow, boto3 and DVC read them)."""
    pytest.importorskip("moto", reason="needs the `integration` extra (moto[server])")
    boto3 = pytest.importorskip("boto3", reason=SCALE)
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3c = boto3.client("s3", endpoint_url=endpoint)
        for bucket in ("mlflow", "dvc"):
            s3c.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _objects(endpoint: str, bucket: str) -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
    return [o["Key"] for page in pages.paginate(Bucket=bucket) for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def mlflow_server(postgres, s3, tmp_path_factory):
    """`mlflow server` on Postgres with artifacts proxied to s3://mlflow; yields its URL."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("mlflow") / "server.log").open("w")
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3}
    proc = subprocess.Popen(
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the driver installed is psycopg2.
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         postgres.replace("postgresql://", "postgresql+psycopg2://") + "/mlflow",
         "--artifacts-destination", "s3://mlflow/artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up in {BOUND_S} s:\n"
                            + Path(log.name).read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@pytest.mark.integration
def test_retrain_on_postgres_and_s3(postgres, s3, mlflow_server, tmp_path, monkeypatch):
    """The retrain graph with Dagster's instance from orchestration/deploy/docker/dagster.yaml
    on Postgres and MLflow's server on Postgres + S3; the registry reads back afterwards."""
    import dagster as dg
    import psycopg2

    from metarec import registry
    from metarec.config import load_config
    from metarec.data.fetch import fetch
    from orchestration.run import run_retrain
    from tests.synth import SYNTH_PARAMS, write_synthetic_csv

    start = time.perf_counter()
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "docker" / "dagster.yaml", home / "dagster.yaml")
    port = postgres.rsplit(":", 1)[1]
    for key, value in {**LAUNCH_ENV, "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": port,
                       "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "",
                       "DAGSTER_PG_DB": "dagster", "DAGSTER_HOME": str(home),
                       "MLFLOW_TRACKING_URI": mlflow_server}.items():
        monkeypatch.setenv(key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(SYNTH_PARAMS))
    cfg = load_config("params.yaml")
    fetch(cfg.data, path=write_synthetic_csv(tmp_path / "incoming"), root=project)

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run = run_retrain("params.yaml", instance)
        assert run.success, run
        assert run.materialized["registered_model"]["tracking_uri"] == mlflow_server

    # A fresh instance (as the webserver would open it) sees the run and its lineage.
    with dg.DagsterInstance.get() as instance:
        record = instance.get_run_by_id(run.run_id)
        assert record is not None and record.status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("registered_model"))
        assert event.run_id == run.run_id
    with psycopg2.connect(f"{postgres}/dagster") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run.run_id,))
        assert cur.fetchone()[0] == 1

    tracking = cfg.tracking
    assert registry.aliases(tracking) == {"challenger": 1}
    (version,) = registry.list_models(tracking)
    assert version.data_hash == run.materialized["raw_dataset"]["dvc_md5"]
    with psycopg2.connect(f"{postgres}/mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT alias, version FROM registered_model_aliases")
        assert cur.fetchall() == [("challenger", 1)]
    keys = _objects(s3, "mlflow")
    assert any(k.endswith("model.onnx") for k in keys), keys
    print(f"\npostgres integration: retrain + registry checks in "
          f"{time.perf_counter() - start:.1f} s (pipeline {run.seconds:.1f} s)")


@pytest.mark.integration
def test_dvc_push_pull_through_s3(s3, tmp_path, monkeypatch):
    """`metarec data push` to the S3 remote named by the environment; a clean clone pulls the
    same dataset version back."""
    from click.testing import CliRunner

    from metarec.cli import main
    from metarec.dvc import dataset_hash, dir_md5, pull_data, record_version

    pytest.importorskip("dvc_s3", reason=SCALE)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "data" / "ratings.csv").write_text("user_id,item_id,rating\n1,2,5\n3,4,1\n")
    (project / "params.yaml").write_text("{}\n")
    recorded = record_version(project / "data", root=project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("METAREC_DVC_REMOTE_URL", "s3://dvc/metarec")
    monkeypatch.setenv("METAREC_DVC_REMOTE_ENDPOINT", s3)
    result = CliRunner().invoke(main, ["data", "push"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _objects(s3, "dvc"), "nothing pushed"
    assert "endpointurl" in (project / ".dvc" / "config.local").read_text()

    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    monkeypatch.delenv("METAREC_DVC_REMOTE_URL")
    pull_data(project)  # the remote the push configured (.dvc/config.local)
    assert dir_md5(project / "data") == recorded.md5 == dataset_hash(project / "data.dvc")
