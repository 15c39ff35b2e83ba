"""`metarec pipeline run`: the `retrain` job executed in-process against a persistent Dagster
instance, so `dagster dev` (same DAGSTER_HOME) shows the run, its metadata and lineage.

One run at a time per workspace: the run holds the workspace lock
(:func:`metarec.pipeline.workspace.workspace_lock`) from start to end, and a second one is
refused at once, naming the holder. Runs that a Dagster daemon launches (`dagster dev`, the
deploy instances) queue instead: the instance file limits runs tagged ``metarec/retrain`` to
one at a time."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

DEFAULT_HOME = ".dagster"
# A new local instance: no telemetry; its run queue (`dagster dev`'s daemon) starts one run
# tagged metarec/retrain at a time, like the deploy instances.
INSTANCE_YAML = """telemetry:
  enabled: false
run_queue:
  tag_concurrency_limits:
    - key: metarec/retrain
      limit: 1
"""
GATE_STEP = "evaluation_report_gate"
GATE_CHECK = "evaluation_report:gate"


@dataclass
class PipelineRun:
    """Outcome of one in-process run: per-asset metadata, per-check verdicts."""

    run_id: str
    success: bool
    seconds: float
    materialized: dict[str, dict[str, str]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    # Per check, the lines of its markdown metadata: the gate's reasons, a contract's failures.
    check_details: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def gate_blocked(self) -> bool:
        """The run failed only because the gate refused the candidate: a normal outcome of a
        retrain (nothing registered, registry unchanged), not an error of the pipeline."""
        return (not self.success and self.checks.get(GATE_CHECK) is False
                and self.failed == [GATE_STEP])


def _text_lines(metadata: dict) -> list[str]:
    """The lines of a check's markdown metadata, list markers stripped."""
    lines = []
    for value in metadata.values():
        if isinstance(value, dg.MarkdownMetadataValue):
            lines += [line.removeprefix("- ") for line in str(value.value).splitlines()
                      if line.strip()]
    return lines


def instance_for(home: str | None = None) -> dg.DagsterInstance:
    """A persistent instance in DAGSTER_HOME (default ./.dagster, created if missing)."""
    home = home or os.environ.get("DAGSTER_HOME") or DEFAULT_HOME
    path = Path(home).resolve()
    path.mkdir(parents=True, exist_ok=True)
    settings = path / "dagster.yaml"
    if not settings.exists():
        settings.write_text(INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(path)
    return dg.DagsterInstance.get()


def run_retrain(params: str = "params.yaml", instance: dg.DagsterInstance | None = None,
                job: str = "retrain") -> PipelineRun:
    """Execute ``job`` in-process, holding the workspace (the current directory) throughout;
    failures of blocking checks skip everything downstream. Another run holding the workspace
    raises :class:`metarec.pipeline.workspace.WorkspaceBusy` before anything runs."""
    from metarec.pipeline.workspace import workspace_lock
    from orchestration.assemble import build_definitions

    run_id = str(uuid.uuid4())
    with workspace_lock(f"metarec pipeline run --job {job}", dagster_run_id=run_id):
        defs = build_definitions(params)
        instance = instance or instance_for()
        start = time.perf_counter()
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False, run_id=run_id)
    run = PipelineRun(result.run_id, result.success, time.perf_counter() - start)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            run.materialized[mat.asset_key.to_user_string()] = {
                k: str(v.value)[:120] for k, v in mat.metadata.items()}
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            name = f"{ev.asset_key.to_user_string()}:{ev.check_name}"
            run.checks[name] = ev.passed
            run.check_details[name] = _text_lines(ev.metadata)
        elif event.event_type_value == "STEP_SKIPPED":
            run.skipped.append(event.step_key)
        elif event.event_type_value == "STEP_FAILURE":
            run.failed.append(event.step_key)
    return run
