"""The `metarec` CLI end to end in a temporary git+DVC repo on fixture data."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from metarec.cli import main
from metarec.data.tables import read_tables
from tests.conftest import REPO


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_help_documents_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    for name in ("data", "pipeline"):
        assert name in out
    out = CliRunner().invoke(main, ["data", "fetch", "--help"]).output
    assert "--record" in out and "--path" in out and "--dataset" in out


def test_fetch_prepare_pipeline(workdir, fixtures):
    runner = CliRunner()
    res = runner.invoke(main, ["data", "fetch", "--path", str(fixtures / "ml100k_recbole")])
    assert res.exit_code == 0, res.output
    assert "recorded as a new version" in res.output
    res = runner.invoke(main, ["data", "prepare"])
    assert res.exit_code == 0, res.output
    assert read_tables(workdir / "artifacts" / "prepared").summary()["interactions"] == 5
    # The fixture is too small for the task protocol: the data contract blocks the run.
    res = runner.invoke(main, ["pipeline", "run", "--dagster-home", str(workdir / ".dagster")])
    assert res.exit_code != 0
    assert "matches data.dvc" in res.output
    assert "check interactions:data_contract: FAILED" in res.output
    # ... and names the failing expectation: table, expectation, column, what was counted.
    assert ("  - interactions: enough task users (user_id): only 0 of 3 users have 13..100 "
            "interactions") in res.output


def test_mismatch_is_a_clear_cli_error(workdir, fixtures):
    runner = CliRunner()
    assert runner.invoke(main, ["data", "fetch", "--path",
                                str(fixtures / "ml100k_recbole")]).exit_code == 0
    res = runner.invoke(main, ["data", "fetch", "--path", str(fixtures / "ml100k_grouplens")])
    assert res.exit_code != 0
    assert "DatasetVersionError" in res.output and "--record" in res.output


def test_bad_params_named(workdir):
    (workdir / "params.yaml").write_text("data:\n  datset: ml-1m\n")
    res = CliRunner().invoke(main, ["data", "prepare"])
    assert res.exit_code != 0 and "'data.datset'" in res.output


def test_python_dash_m_runs_the_cli():
    """`python -m metarec.cli` is the same CLI (benchmarks start the server this way)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "metarec.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "pipeline" in out and "register" in out


REASON = ("test/mae@0 vs item_mean: 2.5945 vs 1.1047, difference +1.4898 [95% CI +1.1741, "
          "+1.8096]: interval entirely on the worse side")


def _refusal():
    from metarec.evaluation.gate import GateCheck, GateDecision

    check = GateCheck("test", "mae", "item_mean", 2.5945, 1.1047, False, REASON, "0",
                      (1.1741, 1.8096))
    return GateDecision(False, (REASON,), (check,))


@pytest.mark.parametrize("command, exit_code", [("evaluate", 0), ("register", 1)])
def test_model_commands_print_the_gate_reasons(workdir, monkeypatch, command, exit_code):
    """`metarec evaluate` and `metarec register` print every reason of the verdict: scenario,
    metric, k, baseline, both values and the interval (the stages themselves are stubbed)."""
    import metarec.pipeline.evaluate as evaluate
    import metarec.pipeline.register as register
    from metarec.evaluation.report import Report

    report = Report(candidate="ridge", metrics={"test": {"ridge": {"mae": 0.8}}})
    monkeypatch.setattr(evaluate, "evaluate_models", lambda cfg: report)
    monkeypatch.setattr(evaluate, "gate_decision", lambda cfg, rep=None: _refusal())
    monkeypatch.setattr(register, "register_candidate", lambda cfg, data_hash: register
                        .Registration(run_id="r1", version=None, decision=_refusal(),
                                      data_hash=None))
    res = CliRunner().invoke(main, [command])
    assert res.exit_code == exit_code, res.output
    assert f"gate: FAILED\n  - {REASON}\n" in res.output


@pytest.mark.parametrize("strict, exit_code", [(False, 0), (True, 1)])
def test_pipeline_run_prints_the_gate_reasons(workdir, monkeypatch, strict, exit_code):
    import orchestration.run as orun

    run = orun.PipelineRun("run1", False, 1.0,
                           checks={"interactions:data_contract": True, orun.GATE_CHECK: False},
                           check_details={"interactions:data_contract": ["all expectations met"],
                                          orun.GATE_CHECK: [REASON]},
                           failed=[orun.GATE_STEP])
    monkeypatch.setattr(orun, "run_retrain", lambda params, instance, job: run)
    monkeypatch.setattr(orun, "instance_for", lambda home: None)
    res = CliRunner().invoke(main, ["pipeline", "run", *(["--strict"] if strict else [])])
    assert res.exit_code == exit_code, res.output
    assert f"check evaluation_report:gate: FAILED\n  - {REASON}\n" in res.output
    assert "all expectations met" not in res.output  # a passed contract stays one line
    assert "gate: the new model was refused" in res.output
