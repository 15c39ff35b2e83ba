"""`metarec pipeline ...`: plugged into the metarec CLI through the `metarec.cli` entry point,
so the library never imports the orchestrator."""

from __future__ import annotations

import click


@click.group()
def pipeline() -> None:
    """Run the Dagster asset graph in-process (the same graph `dagster dev` shows)."""


@pipeline.command("run")
@click.option("--job", default="retrain", show_default=True, help="Dagster job to execute.")
@click.option("--dagster-home", default=None,
              help="Dagster instance folder (default: $DAGSTER_HOME, else ./.dagster).")
@click.option("--strict", is_flag=True,
              help="Exit non-zero also when the gate refuses the new model (by default a "
                   "refusal is reported and exits 0: nothing was registered, nothing broke).")
@click.pass_context
def pipeline_run(ctx: click.Context, job: str, dagster_home: str | None, strict: bool) -> None:
    """Materialise the whole pipeline on the configured dataset, in this process."""
    from metarec.pipeline.workspace import WorkspaceBusy
    from orchestration.run import GATE_CHECK, instance_for, run_retrain

    params = str(ctx.find_root().obj["params"])
    try:
        run = run_retrain(params, instance_for(dagster_home), job=job)
    except WorkspaceBusy as exc:
        raise click.ClickException(str(exc)) from None
    for asset, meta in run.materialized.items():
        shown = ", ".join(f"{k}={v}" for k, v in meta.items() if k != "preview")
        click.echo(f"materialized {asset}: {shown}")
    for check, passed in run.checks.items():
        click.echo(f"check {check}: {'passed' if passed else 'FAILED'}")
        if not passed or check == GATE_CHECK:  # what failed; the gate's reasons either way
            for line in run.check_details.get(check, []):
                click.echo(f"  - {line}")
    if run.skipped:
        click.echo(f"skipped (upstream failed or blocked): {', '.join(run.skipped)}")
    click.echo(f"run {run.run_id}: {'success' if run.success else 'FAILED'} "
               f"in {run.seconds:.1f} s")
    if run.gate_blocked:
        click.echo("gate: the new model was refused (reasons above, also in the evaluation "
                   "report.md); nothing was registered")
        if strict:
            raise click.ClickException("gate refused the candidate (--strict)")
        return
    if not run.success:
        raise click.ClickException("pipeline failed; see the messages above and the run in "
                                   "the Dagster UI (`dagster dev`)")
