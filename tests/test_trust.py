"""Trust (issue 15): a registered version is immutable and verified when served; one run at a
time per workspace, each pipeline run's outputs in folders of its own.

Real stack: MLflow on a temporary SQLite store, ONNX graphs exported from small networks and
served by ONNX Runtime (metarec.serve), the `metarec` CLI, a second OS process holding the lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from metarec import registry as reg
from metarec.cli import main
from metarec.config import Config, ServeConfig, load_config
from metarec.evaluation.report import Report
from metarec.export import export_onnx
from metarec.io import file_sha256, save_state, write_json
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.pipeline.workspace import (WorkspaceBusy, read_holder, run_outputs,
                                        workspace_lock)
from metarec.serve import Recommender
from metarec.serving.app import create_app
from tests.conftest import REPO
from tests.test_models import TINY, plain_meta, tiny_features

CHAMPION = "models:/metarec@champion"
RATINGS = {1004: 5, 1010: 1, 1021: 4}
GATE = {"metrics": ["mae"], "baselines": ["item_mean"], "rule": "point"}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Config:
    """A workspace with its params.yaml (MLflow on SQLite inside it); cwd is the workspace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}, "gate": GATE}))
    (tmp_path / "artifacts" / "features").mkdir(parents=True)
    (tmp_path / "artifacts" / "features" / "encoders.json").write_text("{}")
    return load_config(tmp_path / "params.yaml")


def cli(*args: str):
    return CliRunner().invoke(main, ["--params", "params.yaml", *args])


def train(cfg: Config, seed: int, run_id: str | None = None):
    """What `metarec train` leaves: meta_model.pt and summary.json naming it and its run."""
    torch.manual_seed(seed)
    model = build_model(tiny_features(), TINY).eval()
    out = Path(cfg.train.out_dir)
    save_state(out / "meta_model.pt", {"model": model.state_dict()})
    sha = file_sha256(out / "meta_model.pt")
    run_id = run_id or reg.log_training_run(cfg.tracking, params={"seed": seed})
    write_json(out / "summary.json", {"learner": "maml", "steps": 10, "best_step": 5,
                                      "best_valid_mae": 0.8, "model_sha256": sha,
                                      "mlflow_run_id": run_id,
                                      "model": {"head_factors": False, "item_factors": 0}})
    return model, sha


def evaluate(cfg: Config, sha: str, mae: float) -> None:
    """What `metarec evaluate` leaves: report.json naming the model it evaluated."""
    report = Report(candidate="maml", metrics={"warm": {"maml": {"mae": mae},
                                                        "item_mean": {"mae": 0.95}}},
                    meta_training_gain=True, training={"model_sha256": sha})
    write_json(Path(cfg.evaluation.out_dir) / "report.json", report.to_dict())


def export(cfg: Config, model, sha: str) -> Path:
    """What `metarec export` leaves: the graphs, metadata naming the model, parity.json."""
    out = Path(cfg.export.out_dir)
    export_onnx(model, build_learner(model, plain_meta()).adaptation(), tiny_features(), out,
                titles={i: f"Movie {i}" for i in range(1000, 1030)}, extra={"model_sha256": sha})
    write_json(out / "parity.json", {"passed": True, "max_abs_err": 0.0, "tol": 1e-4})
    return out


def served(cfg: Config, uri: str = CHAMPION) -> tuple[dict[str, bytes], list[dict]]:
    """The files a version serves (verified download) and its scores for one request."""
    folder = reg.fetch_verified(uri, cfg.tracking.tracking_uri)
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    rec = Recommender.load(uri, tracking_uri=cfg.tracking.tracking_uri)
    return files, [i.to_dict() for i in rec.recommend(None, RATINGS, k=30, exclude_seen=False)]


def test_registering_another_model_leaves_the_champion_byte_identical(project):
    cfg = project
    model_a, sha_a = train(cfg, seed=0)
    evaluate(cfg, sha_a, mae=0.80)
    export(cfg, model_a, sha_a)
    assert cli("register").exit_code == 0
    assert cli("promote").exit_code == 0
    files, scores = served(cfg)
    assert files["model.onnx"] == (Path(cfg.export.out_dir) / "model.onnx").read_bytes()

    # Another model trained and exported, the evaluation not rerun: report (A) and export (B)
    # name different models, so `metarec register` refuses and registers nothing.
    model_b, sha_b = train(cfg, seed=1)
    export(cfg, model_b, sha_b)
    res = cli("register")
    assert res.exit_code == 1 and "not one trained model throughout" in res.output
    assert f"evaluation report ({cfg.evaluation.out_dir}): {sha_a[:12]}" in res.output
    assert [v.version for v in reg.list_models(cfg.tracking)] == [1]
    assert served(cfg) == (files, scores)

    # B evaluated too, and logged under the champion's own MLflow run (the case where every
    # version of a run shared one folder): a second version of that run, in a folder of its own.
    run_a = reg.list_models(cfg.tracking)[0].run_id
    train(cfg, seed=1, run_id=run_a)
    evaluate(cfg, sha_b, mae=0.795)
    res = cli("register")
    assert res.exit_code == 0, res.output
    assert reg.aliases(cfg.tracking) == {"champion": 1, "challenger": 2}
    assert served(cfg) == (files, scores)  # champion: same bytes, same scores
    assert reg.champion_report(cfg.tracking).training["model_sha256"] == sha_a
    files_b, scores_b = served(cfg, "models:/metarec/2")
    assert files_b["model.onnx"] != files["model.onnx"] and scores_b != scores
    mlc = reg.client(cfg.tracking)
    assert {mlc.get_model_version("metarec", v).run_id for v in ("1", "2")} == {run_a}
    keys = json.loads(mlc.get_model_version("metarec", "2").tags["key_metrics"])
    assert keys == {"warm": {"mae": 0.795}}  # B's own metrics, from B's report


def _tamper(cfg: Config, version: int, name: str, data: bytes) -> None:
    source = reg.client(cfg.tracking).get_model_version("metarec", str(version)).source
    Path(unquote(urlparse(source).path), name).write_bytes(data)


def test_a_tampered_champion_is_refused_and_reload_keeps_the_old_model(project):
    cfg = project
    model_a, sha_a = train(cfg, seed=0)
    evaluate(cfg, sha_a, mae=0.80)
    export(cfg, model_a, sha_a)
    assert cli("register").exit_code == 0 and cli("promote").exit_code == 0
    torch.manual_seed(7)
    other = build_model(tiny_features(), TINY).eval()  # a valid graph of another network
    export_onnx(other, build_learner(other, plain_meta()).adaptation(), tiny_features(),
                Path("other"))

    token = "trust-test-token-0123456789"
    app = create_app(CHAMPION, ServeConfig(token=token), tracking_uri=cfg.tracking.tracking_uri)
    request = {"ratings": {str(k): v for k, v in RATINGS.items()}, "k": 30,
               "exclude_seen": False}
    with TestClient(app) as client:
        before = client.post("/recommend", json=request).json()
        _tamper(cfg, 1, "model.onnx", Path("other/model.onnx").read_bytes())
        resp = client.post("/reload", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code != 200
        assert "model.onnx" in resp.text and "recorded at registration" in resp.text
        assert client.post("/recommend", json=request).json() == before  # old model serves

    with pytest.raises(reg.IntegrityError, match="metarec version 1 .*model.onnx: sha256"):
        Recommender.load(CHAMPION, tracking_uri=cfg.tracking.tracking_uri)
    res = cli("recommend", "--ratings", "1004:5")
    assert res.exit_code == 1 and "IntegrityError" in res.output and "model.onnx" in res.output


# --------------------------------------------------------------------------- the workspace


HOLD = ("import sys; from metarec.pipeline.workspace import workspace_lock\n"
        "with workspace_lock('metarec pipeline run --job retrain', dagster_run_id='run-A'):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def _holder(cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD], cwd=cwd, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_in_a_workspace_is_refused_naming_the_holder(project, tmp_path):
    holder = _holder(tmp_path)
    try:
        res = cli("pipeline", "run", "--dagster-home", str(tmp_path / ".dagster"))
        assert res.exit_code == 1
        assert "is busy" in res.output and f"pid {holder.pid}" in res.output
        assert "Dagster run run-A" in res.output and "metarec pipeline run" in res.output
        assert not Path("artifacts/runs").exists()  # refused before anything ran
        res = cli("register")
        assert res.exit_code == 1 and "WorkspaceBusy" in res.output
        with pytest.raises(WorkspaceBusy):
            with workspace_lock("test"):
                pass
    finally:
        holder.communicate("")
    with workspace_lock("test") as held:  # released when the holder ended
        assert read_holder()["pid"] == held["pid"]
    assert read_holder() is None


def test_a_killed_holder_leaves_no_stale_lock(project, tmp_path):
    holder = _holder(tmp_path)
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with workspace_lock("after the crash"):
                break
        except WorkspaceBusy:
            assert time.monotonic() < deadline, "lock not released by the kernel"
            time.sleep(0.1)


def test_run_outputs_are_folders_of_the_run():
    cfg = run_outputs(Config(), "3f2a-b1")
    assert (cfg.train.out_dir, cfg.evaluation.out_dir, cfg.export.out_dir) == (
        "artifacts/runs/3f2a-b1/train", "artifacts/runs/3f2a-b1/evaluation",
        "artifacts/runs/3f2a-b1/export")
    assert cfg.features.out_dir == Config().features.out_dir  # data stages stay shared
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError, match="run key"):
            run_outputs(Config(), bad)
