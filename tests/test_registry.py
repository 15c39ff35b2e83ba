"""The registry against a real temporary MLflow SQLite store (one store per module, one
registered model name per test so the tests stay independent)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from metarec import registry as reg
from metarec.config import GateConfig, TrackingConfig
from metarec.evaluation.gate import GateDecision, gate
from metarec.evaluation.report import Report

# The point rule on full-support reports: these tests are about the registry, not the curve.
POLICY = GateConfig(metrics=("mae",), baselines=("item_mean",), champion_margin=0.01,
                    rule="point")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield TrackingConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                             artifact_root=str(root / "artifacts"), experiment="tests")


@pytest.fixture
def cfg(store, request):
    return dataclasses.replace(store, registered_model=f"m_{request.node.name}"[:60])


def make_report(mae: float) -> Report:
    return Report(candidate="melu", metrics={"warm": {"melu": {"mae": mae},
                                                       "item_mean": {"mae": 0.95}}},
                  meta_training_gain=True)


def model_dir(tmp_path: Path, tag: str) -> Path:
    d = tmp_path / f"model_{tag}"
    (d / "encoders").mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"onnx-" + tag.encode() * 100)
    (d / "metadata.json").write_text(json.dumps({"tag": tag}))
    (d / "encoders" / "users.json").write_text("{}")
    return d


def train_and_register(cfg, tmp_path, mae, tag, champion=None):
    report = make_report(mae)
    decision = gate(report, champion, POLICY)
    run_id = reg.log_training_run(cfg, params={"train": {"lr": 0.1, "hidden": [64, 64]}},
                                  epoch_metrics=[{"loss": 1.0}, {"loss": 0.5}], report=report,
                                  decision=decision, data_hash="abc.dir", git_sha="deadbeef",
                                  dagster_run_id="dg-1")
    version = reg.register_if_passed(cfg, run_id, model_dir(tmp_path, tag), decision,
                                     report=report, key_metric_names=("mae",),
                                     data_hash="abc.dir", git_sha="deadbeef")
    return run_id, version


def test_tracking_uri_env_wins(monkeypatch):
    cfg = TrackingConfig(tracking_uri="sqlite:///x.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert reg.tracking_uri(cfg) == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert reg.tracking_uri(cfg) == "sqlite:///x.db"
    assert reg.artifact_location(cfg, "sqlite:///x.db").endswith("/mlartifacts")
    assert reg.artifact_location(cfg, "http://mlflow:5000") is None


def test_run_records_params_metrics_tags_and_report(cfg, tmp_path):
    run_id, _ = train_and_register(cfg, tmp_path, 0.8, "a")
    mlc = reg.client(cfg)
    run = mlc.get_run(run_id)
    assert run.data.params["train.lr"] == "0.1"
    assert run.data.params["train.hidden"] == "[64, 64]"
    assert run.data.tags["data_hash"] == "abc.dir" and run.data.tags["dagster_run_id"] == "dg-1"
    assert run.data.tags["gate_verdict"] == "passed"
    assert [m.value for m in mlc.get_metric_history(run_id, "loss")] == [1.0, 0.5]
    assert run.data.metrics["warm/mae"] == pytest.approx(0.8)
    assert run.info.status == "FINISHED"
    files = {f.path for f in mlc.list_artifacts(run_id, "evaluation")}
    assert files == {"evaluation/report.json", "evaluation/gate_verdict.json"}


def test_register_promote_rollback(cfg, tmp_path):
    import mlflow

    _, v1 = train_and_register(cfg, tmp_path, 0.80, "one")
    assert v1 == 1 and reg.aliases(cfg) == {"challenger": 1}
    first = reg.promote(cfg, actor="alice")
    assert (first.version, first.previous, first.actor) == (1, None, "alice")
    assert reg.aliases(cfg) == {"champion": 1}

    champ = reg.champion_report(cfg)
    assert champ == make_report(0.80)
    _, v2 = train_and_register(cfg, tmp_path, 0.805, "two", champion=champ)  # within margin
    assert v2 == 2 and reg.aliases(cfg) == {"champion": 1, "challenger": 2}
    listed = reg.list_models(cfg)
    assert [(v.version, v.aliases, v.gate_passed) for v in listed] == [
        (2, ("challenger",), True), (1, ("champion",), True)]
    assert listed[0].key_metrics == {"warm": {"mae": 0.805}} and listed[0].data_hash == "abc.dir"

    reg.promote(cfg, version=2, actor="bob")
    tags = reg.client(cfg).get_model_version(cfg.registered_model, "2").tags
    assert (tags["promoted_by"], tags["promoted_from"]) == ("bob", "1")
    # Serving downloads the champion by alias: the files are those registered. (The registry
    # URI follows MLFLOW_TRACKING_URI; download_artifacts' tracking_uri alone does not set it.)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", reg.tracking_uri(cfg))
        dest = mlflow.artifacts.download_artifacts(f"models:/{cfg.registered_model}@champion",
                                                   dst_path=str(tmp_path / "dl"))
    assert (Path(dest) / "model.onnx").read_bytes() == b"onnx-" + b"two" * 100

    back = reg.rollback(cfg, actor="carol")
    assert (back.version, back.previous, back.action) == (1, 2, "rollback")
    assert reg.aliases(cfg) == {"champion": 1}
    assert [e["action"] for e in reg.history(cfg)] == ["promote", "promote", "rollback"]
    with pytest.raises(reg.RegistryError, match="first champion"):
        reg.rollback(cfg)
    with pytest.raises(reg.RegistryError, match="already champion"):
        reg.promote(cfg, version=1)


def test_failed_gate_registers_nothing(cfg, tmp_path):
    run_id, version = train_and_register(cfg, tmp_path, 0.99, "bad")  # worse than item_mean
    assert version is None
    assert reg.list_models(cfg) == [] and reg.aliases(cfg) == {}
    assert reg.client(cfg).get_run(run_id).data.tags["gate_verdict"] == "failed"
    # A verdict edited into "passed" without passing checks is refused too.
    forged = GateDecision(True, ("trust me",), ())
    assert reg.register_if_passed(cfg, run_id, model_dir(tmp_path, "f"), forged) is None
    assert reg.list_models(cfg) == []


def test_promote_rechecks_the_stored_verdict(cfg, tmp_path):
    run_id, v1 = train_and_register(cfg, tmp_path, 0.8, "ok")
    reg.promote(cfg, actor="alice")
    mlc = reg.client(cfg)
    failed = gate(make_report(0.99), None, POLICY)
    source = f"{mlc.get_run(run_id).info.artifact_uri}/model"
    outside = mlc.create_model_version(cfg.registered_model, source=source, run_id=run_id,
                                       tags={"gate_verdict": failed.to_json()})
    with pytest.raises(reg.RegistryError, match="did not pass"):
        reg.promote(cfg, version=int(outside.version))
    assert reg.aliases(cfg) == {"champion": v1}


def _local(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def _version_folder(cfg, version: int) -> Path:
    mv = reg.client(cfg).get_model_version(cfg.registered_model, str(version))
    return _local(mv.source)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_versions_of_one_run_have_folders_of_their_own(cfg, tmp_path):
    """Re-exporting into the same folder and registering again from the same MLflow run
    writes a new folder: the first version's files, report and digests stay as they were."""
    report = make_report(0.8)
    decision = gate(report, None, POLICY)
    run_id = reg.log_training_run(cfg, params={}, report=report, decision=decision)
    export = model_dir(tmp_path, "first")
    v1 = reg.register_if_passed(cfg, run_id, export, decision, report=report)
    reg.promote(cfg, actor="alice")
    before = _snapshot(_version_folder(cfg, v1))
    assert set(before) == {"model.onnx", "metadata.json", "encoders/users.json",
                           "evaluation/report.json", "evaluation/gate_verdict.json"}
    tags = reg.client(cfg).get_model_version(cfg.registered_model, str(v1)).tags
    assert json.loads(tags["artifact_sha256"]) == reg.folder_manifest(_version_folder(cfg, v1))

    (export / "model.onnx").write_bytes(b"another model")  # `metarec export` of another model
    (export / "parity.json").write_text("{}")
    v2 = reg.register_if_passed(cfg, run_id, export, decision, report=make_report(0.7))
    assert _snapshot(_version_folder(cfg, v1)) == before
    assert _version_folder(cfg, v2) != _version_folder(cfg, v1)
    assert _snapshot(_version_folder(cfg, v2))["model.onnx"] == b"another model"
    assert reg.champion_report(cfg) == make_report(0.8)
    assert reg.aliases(cfg) == {"champion": v1, "challenger": v2}


def test_failed_upload_midway_leaves_every_version_as_it_was(cfg, tmp_path, monkeypatch):
    """The artifact store fails on the third file of a registration from the champion's own
    run: the files written so far sit in the new version's folder, no version is created,
    and the champion's folder, report and aliases are untouched."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    report = make_report(0.8)
    decision = gate(report, None, POLICY)
    run_id = reg.log_training_run(cfg, params={}, report=report, decision=decision)
    v1 = reg.register_if_passed(cfg, run_id, model_dir(tmp_path, "good"), decision,
                                report=report)
    reg.promote(cfg)
    run_root = _local(reg.client(cfg).get_run(run_id).info.artifact_uri)
    before = _snapshot(run_root)
    real, calls = LocalArtifactRepository.log_artifact, []

    def failing(self, local_file, artifact_path=None):
        calls.append(local_file)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, local_file, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", failing)
    with pytest.raises(OSError, match="No space left"):
        reg.register_if_passed(cfg, run_id, model_dir(tmp_path, "half"), decision,
                               report=make_report(0.7))
    monkeypatch.undo()
    after = _snapshot(run_root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    written = sorted(set(after) - set(before))
    assert len(written) == 2 and len({tuple(k.split("/")[:2]) for k in written}) == 1
    assert [v.version for v in reg.list_models(cfg)] == [v1]
    assert reg.aliases(cfg) == {"champion": v1}
    assert reg.champion_report(cfg) == report


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_a_changed_version_is_refused_on_read(cfg, tmp_path, change):
    _, v1 = train_and_register(cfg, tmp_path, 0.8, "t")
    reg.promote(cfg)
    folder = _version_folder(cfg, v1)
    if change == "edit":
        (folder / "evaluation" / "report.json").write_text(make_report(0.1).to_json())
    elif change == "add":
        (folder / "extra.onnx").write_bytes(b"x")
    else:
        (folder / "metadata.json").unlink()
    mlc = reg.client(cfg)
    mv = mlc.get_model_version(cfg.registered_model, str(v1))
    expected = {"edit": r"evaluation/report.json: sha256 [0-9a-f]{12}\.\.\. but [0-9a-f]{12}",
                "add": r"not registered \['extra.onnx'\]",
                "remove": r"missing \['metadata.json'\]"}[change]
    with pytest.raises(reg.IntegrityError, match=expected):
        reg.download_version(mlc, mv, tmp_path / "dl")
    if change == "edit":  # the gate never compares against an altered champion report
        with pytest.raises(reg.RegistryError, match="differs from the file recorded"):
            reg.champion_report(cfg)


def test_a_version_without_digests_cannot_be_verified(cfg, tmp_path):
    run_id, _ = train_and_register(cfg, tmp_path, 0.8, "old")
    mlc = reg.client(cfg)
    mlc.log_artifacts(run_id, str(model_dir(tmp_path, "legacy")), "model")
    legacy = mlc.create_model_version(cfg.registered_model, run_id=run_id,
                                      source=f"{mlc.get_run(run_id).info.artifact_uri}/model")
    with pytest.raises(reg.IntegrityError, match="records no sha256"):
        reg.download_version(mlc, legacy, tmp_path / "dl")


def test_auto_promote_and_empty_model_dir(cfg, tmp_path):
    report = make_report(0.7)
    decision = gate(report, None, POLICY)
    run_id = reg.log_training_run(cfg, params={}, report=report, decision=decision)
    with pytest.raises(reg.RegistryError, match="no model files"):
        reg.register_if_passed(cfg, run_id, tmp_path / "missing", decision)
    v = reg.register_if_passed(cfg, run_id, model_dir(tmp_path, "auto"), decision,
                               auto_promote=True)
    assert reg.aliases(cfg) == {"champion": v}
    assert reg.history(cfg)[0]["actor"] == "auto_promote"


def test_cli_models_promote_rollback(cfg, tmp_path):
    from click.testing import CliRunner

    from metarec.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  tracking_uri: {cfg.tracking_uri}\n"
                      f"  artifact_root: {cfg.artifact_root}\n  experiment: {cfg.experiment}\n"
                      f"  registered_model: {cfg.registered_model}\n")
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--params", str(params), *args], catch_exceptions=False)

    assert "no versions registered" in cli("models").output
    train_and_register(cfg, tmp_path, 0.8, "c1")
    train_and_register(cfg, tmp_path, 0.79, "c2")
    out = cli("models").output
    assert "v2" in out and "challenger" in out and "gate=passed" in out and "mae=0.7900" in out
    assert "champion vNone -> v1" in cli("promote", "--version", "1", "--actor", "ci").output
    assert "champion v1 -> v2" in cli("promote").output
    assert "rolled back v2 -> v1" in cli("rollback").output
    listed = json.loads(cli("models", "--json").output)
    assert [(v["version"], v["aliases"]) for v in listed] == [(2, []), (1, ["champion"])]
    res = cli("rollback")
    assert res.exit_code == 1 and "first champion" in res.output
