"""`metarec pipeline run`: the `retrain` job executed in-process against a persistent Dagster
instance, so `dagster dev` (same DAGSTER_HOME) shows the run, its metadata and lineage."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

DEFAULT_HOME = ".dagster"
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
        settings.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(path)
    return dg.DagsterInstance.get()


def run_retrain(params: str = "params.yaml", instance: dg.DagsterInstance | None = None,
                job: str = "retrain") -> PipelineRun:
    """Execute ``job`` in-process; failures of blocking checks skip everything downstream."""
    from orchestration.assemble import build_definitions

    defs = build_definitions(params)
    instance = instance or instance_for()
    start = time.perf_counter()
    result = defs.resolve_job_def(job).execute_in_process(instance=instance,
                                                          raise_on_error=False)
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
