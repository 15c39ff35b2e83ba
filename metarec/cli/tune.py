"""`metarec tune`: the Optuna study of metarec.pipeline.tune (one process, or one worker of
many sharing a study through its storage)."""

from __future__ import annotations

import dataclasses
import json

import click

from metarec.cli.common import reported


@click.command("tune")
@click.option("--worker", is_flag=True,
              help="Only run trials (join the study, or create it); leave the report and the "
                   "overrides file to a later `metarec tune`.")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage (default tune.storage), e.g. postgresql+psycopg2://u@db/optuna.")
@click.option("--study", default=None, help="Study name (default tune.study).")
@click.option("--trials", type=int, default=None,
              help="Trials in the whole study (default tune.n_trials).")
@click.option("--max-trials", type=int, default=None,
              help="Stop this process after running this many trials.")
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), default=None,
              help="Default tune.pruner; none: every trial runs all folds.")
@click.option("--folds", type=int, default=None, help="Folds (default tune.folds).")
@click.option("--max-steps", type=int, default=None,
              help="Training steps of every trial (default tune.max_steps).")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Seconds this process may start new trials (default tune.timeout_s).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def tune_cmd(ctx: click.Context, worker: bool, storage: str | None, study: str | None,
             trials: int | None, max_trials: int | None, pruner: str | None,
             folds: int | None, max_steps: int | None, timeout_s: float | None,
             as_json: bool) -> None:
    """Search tune.space by cross-validation over the training + validation users (the test
    users are never read); write the best trial to tune.overrides_file for review."""
    from metarec.config import ConfigError, load_config
    from metarec.pipeline.tune import tune_study

    try:  # the study searches around params.yaml itself, never an earlier study's overrides
        cfg = load_config(ctx.find_root().obj["params"], overrides=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    changes = {k: v for k, v in {"study": study, "n_trials": trials, "pruner": pruner,
                                 "folds": folds, "max_steps": max_steps,
                                 "timeout_s": timeout_s}.items() if v is not None}
    cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, **changes))
    with reported(ConfigError):
        outcome = tune_study(cfg, storage, worker=worker, max_trials=max_trials)
    ran = outcome.worker
    if as_json:
        click.echo(json.dumps({"ran": ran.ran, "counts": ran.counts,
                               "report": None if outcome.report is None
                               else dataclasses.asdict(outcome.report),
                               "overrides_file": None if outcome.overrides is None
                               else str(outcome.overrides),
                               "mlflow_run_id": outcome.mlflow_run_id}, default=str))
        return
    click.echo(f"study {ran.study} ({ran.storage}): this process ran trials {ran.ran}; "
               f"study now {ran.counts}")
    if outcome.report is not None:
        for line in outcome.report.lines():
            click.echo(line)
    if outcome.overrides is not None:
        click.echo(f"wrote {outcome.overrides}: review it, then set tune.use_overrides: true "
                   "to train with it")
