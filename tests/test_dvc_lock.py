"""dvc.yaml and dvc.lock cannot drift from the code: each stage lists every metarec module its
library function imports (checked against the static import graph), and real DVC, run on a copy
of the tracked code, params.yaml, dvc.yaml and dvc.lock, finds no changed code dep, param or
command (only the data and artifacts, which a checkout does not hold). Then the pipeline's data
assets, run on a temporary git + DVC repo, leave `dvc status` clean: they record the stages they
build in dvc.lock (and bytecode beside the code deps changes nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from metarec.dvc import run_dvc
from tests.conftest import REPO
from tests.test_imports import import_graph, module_files

# The library function each dvc.yaml stage's command calls (a new stage must be added here).
STAGE_ENTRY = {"prepare": "metarec.data.prepare", "features": "metarec.features.build",
               "tasks": "metarec.pipeline.tasks"}
FIX = ("after changing a stage's code, deps or params: `dvc repro` (or `dvc commit -f STAGE` "
       "when its outputs cannot change), then commit dvc.lock")


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _closure(module: str, graph: dict[str, dict[str, int]]) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += list(graph.get(m, {}))
    # metarec.config only parses params.yaml: the stage's `params:` are its values.
    return {m for m in seen if m != "metarec" and not m.startswith("metarec.config")}


def test_stage_code_deps_cover_every_module_the_stage_imports():
    stages, graph, files = _stages(), import_graph(), module_files()
    assert set(stages) == set(STAGE_ENTRY), "map each dvc.yaml stage to its library function"
    for stage, entry in STAGE_ENTRY.items():
        deps = [d for d in stages[stage]["deps"] if d.startswith("metarec")]
        for dep in deps:
            assert (REPO / dep).exists(), f"{stage}: dep {dep} does not exist"
        missing = sorted(
            str(files[m].relative_to(REPO)) for m in _closure(entry, graph)
            if not any(files[m].relative_to(REPO).as_posix() == d
                       or files[m].relative_to(REPO).as_posix().startswith(d.rstrip("/") + "/")
                       for d in deps))
        assert not missing, (f"dvc.yaml stage {stage!r} imports {missing} but does not list "
                             f"them as deps, so `dvc repro` would miss their changes; {FIX}")


def _tracked_copy(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "metarec", dest / "metarec",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_dvc_lock_agrees_with_the_code_and_params(tmp_path):
    """`dvc status` on the tracked files alone: every code dep, param and command matches."""
    root = _tracked_copy(tmp_path)
    # Bytecode written beside a directory dep must not count as a code change (.dvcignore).
    (root / "metarec" / "features" / "__pycache__").mkdir()
    (root / "metarec" / "features" / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"x")
    run_dvc("init", "--no-scm", "-q", cwd=root)
    status = json.loads(run_dvc("status", "--json", cwd=root) or "{}")
    outputs = {"data", *(o for s in _stages().values() for o in s["outs"])}
    drift = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"...
                drift.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                if not isinstance(paths, dict):
                    drift.append(f"{stage}: {kind} {paths}")
                    continue
                drift += [f"{stage}: {kind} {path} ({what})" for path, what in paths.items()
                          if path not in outputs]  # data/artifacts: not in a checkout
    assert not drift, "dvc.lock disagrees with the tracked files:\n" + "\n".join(drift) + \
        f"\n{FIX}"


def test_pipeline_data_assets_leave_dvc_status_clean(tmp_path, monkeypatch):
    """A fresh git + DVC repo with this repo's stages and code: the data assets build and
    record the stages, `dvc status` is clean, and a second run changes nothing in dvc.lock."""
    from metarec.config import load_config
    from metarec.data.fetch import fetch
    from metarec.dvc import record_stage
    from orchestration import data_assets
    from orchestration.resources import local_resources
    from tests.synth import SYNTH_PARAMS, write_synthetic_csv

    root = _tracked_copy(tmp_path / "repo")
    (root / "dvc.lock").unlink()  # the committed lock is ML-100K's; this repo starts without
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/data\n/artifacts\n/.metarec-cache\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # DVC needs every section
    for section, values in SYNTH_PARAMS.items():
        params[section] = {**params[section], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    fetch(load_config("params.yaml").data, path=write_synthetic_csv(tmp_path / "in"), root=root)
    graph = [*dg.load_assets_from_modules([data_assets]),
             *dg.load_asset_checks_from_modules([data_assets])]
    result = dg.materialize(graph, instance=dg.DagsterInstance.ephemeral(),
                            resources=local_resources(root=".", params="params.yaml"))
    assert result.success
    said = {node: result.asset_materializations_for_node(node)[0].metadata["dvc_lock"].value
            for node in ("canonical_tables", "features", "cold_start_tasks")}
    assert all("recorded in dvc.lock" in v for v in said.values()), said
    lock = (root / "dvc.lock").read_text()
    assert set(yaml.safe_load(lock)["stages"]) == set(STAGE_ENTRY)
    assert "up to date" in run_dvc("status", cwd=root), run_dvc("status", cwd=root)
    # Recording the same outputs again is a no-op.
    for stage in STAGE_ENTRY:
        record_stage(stage, load_config("params.yaml"), root)
    assert (root / "dvc.lock").read_text() == lock
    # Bytecode beside a code dep (any checkout that ran Python) is not a change either.
    pyc = root / "metarec" / "data" / "__pycache__"
    pyc.mkdir(exist_ok=True)
    (pyc / "tables.cpython-311.pyc").write_bytes(b"x")
    assert "up to date" in run_dvc("status", cwd=root)


def test_a_run_with_other_params_leaves_dvc_lock_alone(tmp_path):
    """dvc.lock pairs outputs with params.yaml's values: a run whose sections differ does not
    record its outputs there."""
    from metarec.config import config_from_dict
    from metarec.dvc import record_stage

    root = _tracked_copy(tmp_path)
    run_dvc("init", "--no-scm", "-q", cwd=root)
    other = config_from_dict({"tasks": {"query_size": 7}})
    said = record_stage("tasks", other, root)
    assert "not recorded" in said and "tasks" in said
    assert (root / "dvc.lock").read_bytes() == (REPO / "dvc.lock").read_bytes()
    assert "no DVC stage 'nope'" in record_stage("nope", other, root)


@pytest.mark.parametrize("leftover", [".data.4242.abcd1234.tmp", ".data.old.4242",
                                      "metarec/features/__pycache__/x.pyc"])
def test_leftovers_are_ignored_by_git(leftover):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "check-ignore", "-q", "--no-index", leftover], cwd=REPO)
    assert res.returncode == 0, f"{leftover} is not ignored by .gitignore"
