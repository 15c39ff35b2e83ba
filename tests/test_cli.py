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
