"""`metarec data ingest` in a real DVC repo: events folded into a new data.dvc version with
the watermark, the contract's quarantine, nothing added twice, prepare merging the events,
and SIGKILL at every step of the commit leaving data/ + data.dvc at the old version or, once
completed by the next run, the new one, never a mix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from metarec.config import load_config
from metarec.dvc import dir_md5, read_dvc_file
from metarec.feedback.events import IntakeRules, parse_events
from metarec.feedback.fold import read_events, read_watermark
from metarec.feedback.ingest import JOURNAL, ingest, recover
from metarec.feedback.store import EventStore
from tests.conftest import REPO
from tests.synth import SYNTH_PARAMS, write_synthetic_csv

STEPS = ("read", "checked", "staged", "journal", "moved-old", "moved-new", "recorded", "done")
NOW = 1_800_000_000.0


def _events(start: int, n: int, **extra) -> list[dict]:
    # New users 500.. rating items 1..80; user 500+k gets attributes on its first event.
    out = []
    for i in range(start, start + n):
        event = {"event_id": f"e{i}", "user_id": 500 + i % 4, "item_id": 1 + i % 80,
                 "rating": 1 + i % 5, "timestamp": 1_700_000_000 + i}
        if i < 4:
            event["user_features"] = {"gender": "F", "age": 20 + i}
        out.append({**event, **extra})
    return out


def _add(project: Path, events: list[dict]) -> None:
    store = EventStore(f"sqlite:///{project}/feedback.db")
    store.add(parse_events(events, IntakeRules(), now=NOW))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A git + DVC project on the synthetic CSV dataset (data.dvc recorded) with 30 events
    in its store, two of which break the contract."""
    from metarec.data.fetch import fetch

    project = tmp_path_factory.mktemp("ingest") / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "params.yaml").write_text(yaml.safe_dump(SYNTH_PARAMS))
    cfg = load_config(project / "params.yaml")
    fetch(cfg.data, path=write_synthetic_csv(project.parent / "incoming"), root=project)
    bad = [{"event_id": "unknown-item", "user_id": 3, "item_id": 999, "rating": 4,
            "timestamp": 1_700_000_100},
           {"event_id": "replayed", "user_id": 600, "item_id": 2, "rating": 4,
            "timestamp": 1_700_000_003}]  # same (user, item, time) as an earlier event below
    _add(project, _events(0, 28) + [bad[0], {**bad[1], "user_id": 503, "item_id": 4}])
    return project


@pytest.fixture
def project(template, tmp_path) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(template, dest, symlinks=True)
    return dest


def _state(project: Path) -> tuple[str, str | None]:
    """(md5 of data/ or 'missing', data.dvc's md5)."""
    data = project / "data"
    return (dir_md5(data) if data.is_dir() else "missing",
            read_dvc_file(project / "data.dvc").md5)


def test_ingest_folds_events_into_a_new_version_once(project, monkeypatch):
    monkeypatch.chdir(project)
    cfg = load_config("params.yaml")
    before = _state(project)
    res = ingest(cfg, now=NOW)
    assert (res.watermark_before, res.watermark, res.accepted, res.quarantined) == (0, 30, 28, 2)
    assert res.changed and _state(project) == (res.md5, res.md5) != before
    folder = project / "data" / "feedback"
    mark = read_watermark(folder)
    assert (mark.seq, mark.events, mark.quarantined) == (30, 28, 2)
    held = read_events(folder, "quarantine.csv").set_index("event_id")["reason"]
    assert "item in catalog" in held["unknown-item"]
    assert "not a repeated rating" in held["replayed"]
    contract = json.loads((project / "artifacts/ingest/contract.json").read_text())
    assert {f["expectation"] for f in contract["failures"]} == {"item in catalog",
                                                               "not a repeated rating"}
    # Twice: nothing new, nothing written.
    again = ingest(cfg, now=NOW)
    assert not again.changed and again.watermark == 30 and _state(project) == (res.md5,) * 2
    # New events move the watermark on; only they are checked and folded in.
    _add(project, _events(28, 5))
    third = ingest(cfg, now=NOW)
    assert (third.watermark_before, third.watermark, third.accepted) == (30, 35, 5)
    assert len(read_events(folder)) == 33 and len(read_watermark(folder).ingests) == 2
    # `data prepare` merges them: new users with their attributes, the ratings in.
    from metarec.data.prepare import prepare_dataset

    tables = prepare_dataset(cfg.data)
    users = tables.users.set_index("user_id")
    assert {500, 501, 502, 503} <= set(users.index)
    assert users.loc[501, "gender"] == "F" and users.loc[501, "age"] == 21
    assert len(tables.interactions[tables.interactions.user_id >= 500]) == 33
    from metarec.feedback.ingest import feedback_lineage

    assert feedback_lineage(cfg) == {"feedback_watermark": "35", "feedback_events": "33",
                                     "feedback_quarantined": "2"}


def test_ingest_refuses_data_that_is_not_the_recorded_version(project, monkeypatch):
    from metarec.dvc import DatasetVersionError

    monkeypatch.chdir(project)
    (project / "data" / "csv" / "interactions.csv").write_text("user_id,item_id\n")
    with pytest.raises(DatasetVersionError, match="restore it"):
        ingest(load_config("params.yaml"), now=NOW)


def _killed_at(project: Path, step: str) -> int:
    """Run an ingest in a child process that SIGKILLs itself once ``step`` is done."""
    script = textwrap.dedent(f"""
        import os, signal
        from metarec.config import load_config
        from metarec.feedback.ingest import ingest

        def step(name):
            if name == {step!r}:
                os.kill(os.getpid(), signal.SIGKILL)

        ingest(load_config("params.yaml"), now={NOW}, step=step)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.returncode


def _kill_and_rerun(project: Path, step: str, monkeypatch) -> None:
    monkeypatch.chdir(project)
    old = _state(project)
    assert _killed_at(project, step) == -signal.SIGKILL
    journal = (project / JOURNAL).exists()
    if not journal:  # before the commit point: nothing of the version changed
        assert _state(project) == old
    # The next run (or any reader of data/: ensure_data) completes or discards, never mixes.
    recover(load_config("params.yaml").data, project)
    data, dvc = _state(project)
    assert data == dvc and (data == old[0]) == (not journal)
    assert not (project / JOURNAL).exists()
    assert not [p.name for p in project.iterdir() if p.name.startswith(".data.ingest")]
    res = ingest(load_config("params.yaml"), now=NOW)
    final = _state(project)
    assert final[0] == final[1] and read_watermark(project / "data/feedback").seq == 30
    assert res.changed == (not journal)
    assert len(read_events(project / "data/feedback")) == 28  # nothing folded twice


def test_sigkill_mid_commit_then_rerun(project, monkeypatch):
    _kill_and_rerun(project, "moved-old", monkeypatch)  # data/ moved aside, not yet replaced


@pytest.mark.slow
@pytest.mark.parametrize("step", [s for s in STEPS if s not in ("moved-old", "done")])
def test_sigkill_at_every_step(project, step, monkeypatch):
    _kill_and_rerun(project, step, monkeypatch)


def test_ensure_data_completes_an_interrupted_ingest(project, monkeypatch):
    from metarec.pipeline.data import ensure_data

    monkeypatch.chdir(project)
    assert _killed_at(project, "moved-old") == -signal.SIGKILL
    assert not (project / "data").exists()  # mid-commit on disk; the journal says so
    detail = ensure_data(load_config("params.yaml").data, project)
    assert "completed an interrupted ingest" in detail
    data, dvc = _state(project)
    assert data == dvc and read_watermark(project / "data/feedback").seq == 30
    # A workspace that lost data/ gets the ingested version back from the DVC cache (it
    # cannot be fetched: the source has no events).
    shutil.rmtree(project / "data")
    assert "checked out" in ensure_data(load_config("params.yaml").data, project)
    assert _state(project) == (dvc, dvc)


def test_ingest_job_then_the_data_sensor_requests_retrain(project, monkeypatch):
    """The Dagster `ingest` job (asset feedback_events + its blocking events_contract check)
    makes the new version; the data.dvc sensor then asks for `retrain` on it, once."""
    import dagster as dg

    from orchestration.assemble import build_definitions
    from orchestration.run import run_retrain

    monkeypatch.chdir(project)
    old = read_dvc_file(project / "data.dvc").md5
    run = run_retrain("params.yaml", dg.DagsterInstance.ephemeral(), job="ingest")
    assert run.success, run
    assert run.checks == {"feedback_events:events_contract": True}
    meta = run.materialized["feedback_events"]
    new = read_dvc_file(project / "data.dvc").md5
    assert meta["dvc_md5"] == new != old and meta["quarantined"] == "2"
    sensor = build_definitions("params.yaml").get_sensor_def("new_data_sensor")
    request = sensor(dg.build_sensor_context(cursor=old))
    assert request.run_key == new and sensor.job_name == "retrain"
    assert isinstance(sensor(dg.build_sensor_context(cursor=new)), dg.SkipReason)
