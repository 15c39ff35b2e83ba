"""`metarec train`, `evaluate`, `export`, `register`: the model stages of metarec.pipeline.

Each holds the workspace lock while it runs (metarec.pipeline.workspace): it is refused, naming
the holder, while a `metarec pipeline run` or another model stage works in this checkout.
"""

from __future__ import annotations

import click

from metarec.cli.common import config_of, reported


def _holding(command: str):
    from metarec.pipeline.workspace import workspace_lock

    return workspace_lock(command)


@click.command("train")
@click.option("--no-resume", is_flag=True, help="Start afresh even if a checkpoint exists.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also train the network baselines (global, finetune).")
@click.pass_context
def train_cmd(ctx: click.Context, no_resume: bool, baselines: bool) -> None:
    """Meta-train the configured learner (meta.learner) and the baselines -> train.out_dir."""
    from metarec.pipeline.train import train_baseline_models, train_meta_model

    cfg = config_of(ctx)
    with reported(), _holding("metarec train"):
        summary = train_meta_model(cfg, resume=not no_resume)
        click.echo(f"{summary['learner']}: {summary['steps']} steps, best validation "
                   f"{summary.get('valid_error', 'MAE')} {summary['best_valid_mae']:.4f} at step "
                   f"{summary['best_step']}")
        choice = summary.get("head_factors_choice")
        if choice:
            click.echo(f"model.head_factors auto: {'with' if choice['head_factors'] else 'without'}"
                       f" the item-factor head (validation error {choice['error_with']:.4f} "
                       f"with, {choice['error_without']:.4f} without, standard error "
                       f"{choice['standard_error']:.4f}"
                       + ("; the rule's pick never beat its start: trained over untrained"
                          if choice.get("rule") == "trained over untrained" else "") + ")")
        if baselines:
            base = train_baseline_models(cfg)
            click.echo(f"baselines {', '.join(base['baselines'])}: global network "
                       f"validation MAE {base['global_valid_mae']:.4f}")


@click.command("evaluate")
@click.pass_context
def evaluate_cmd(ctx: click.Context) -> None:
    """Evaluate the learner and baselines per scenario; print the gate verdict."""
    from metarec.pipeline.evaluate import evaluate_models, gate_decision

    cfg = config_of(ctx)
    with reported(), _holding("metarec evaluate"):
        report = evaluate_models(cfg)
        decision = gate_decision(cfg, report)
    click.echo(report.to_markdown())
    _echo_verdict(decision)


def _echo_verdict(decision) -> None:
    """The gate's verdict and every reason (metric, scenario, k, baseline, values, interval)."""
    click.echo(f"gate: {'PASSED' if decision.passed else 'FAILED'}")
    for reason in decision.reasons:
        click.echo(f"  - {reason}")


@click.command("export")
@click.pass_context
def export_cmd(ctx: click.Context) -> None:
    """Export ONNX graphs (adaptation inside) and check parity with PyTorch."""
    from metarec.pipeline.export import export_model

    cfg = config_of(ctx)
    with reported(), _holding("metarec export"):
        result, parity = export_model(cfg)
    click.echo(f"{result.model_path}, {result.scorer_path}: parity max |err| "
               f"{parity.max_abs_err:.2e} (tol {parity.tol:g}) -> "
               f"{'passed' if parity.passed else 'FAILED'}")
    if not parity.passed:
        raise click.ClickException("ONNX parity check failed")


@click.command("register")
@click.pass_context
def register_cmd(ctx: click.Context) -> None:
    """Log the run to MLflow; register the export as `challenger` if the gate passes."""
    from metarec.pipeline.lineage import dataset_hash_or_none
    from metarec.pipeline.register import register_candidate

    cfg = config_of(ctx)
    with reported(), _holding("metarec register"):
        done = register_candidate(cfg, data_hash=dataset_hash_or_none(cfg.data))
    _echo_verdict(done.decision)
    if not done.registered:
        raise click.ClickException(f"gate failed; run logged as {done.run_id}, nothing "
                                   "registered (reasons above)")
    click.echo(f"registered version {done.version} as challenger (run {done.run_id})")
