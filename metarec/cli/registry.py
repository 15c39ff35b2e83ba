"""`metarec models`, `promote`, `rollback`: the MLflow registry's versions and aliases."""

from __future__ import annotations

import json

import click

from metarec.cli.common import config_of, reported


def _registry_call(fn, *args, **kwargs):
    from metarec.registry import RegistryError

    with reported(RegistryError):
        return fn(*args, **kwargs)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool) -> None:
    """List model versions: aliases, key metrics, dataset hash, gate verdict."""
    import dataclasses

    from metarec.registry import list_models

    cfg = config_of(ctx)
    versions = _registry_call(list_models, cfg.tracking)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(v) for v in versions], indent=2))
        return
    if not versions:
        click.echo(f"{cfg.tracking.registered_model}: no versions registered")
        return
    for v in versions:
        verdict = {True: "passed", False: "FAILED", None: "-"}[v.gate_passed]
        metrics = "; ".join(f"{s}: " + ", ".join(f"{m}={x:.4f}" for m, x in vals.items())
                            for s, vals in v.key_metrics.items())
        click.echo(f"v{v.version:<4} {','.join(v.aliases) or '-':<20} data={v.data_hash or '-'} "
                   f"git={(v.git_sha or '-')[:10]} gate={verdict} {v.created} {metrics}")


@click.command("promote")
@click.option("--version", "version", type=int, default=None,
              help="Version to make champion (default: the current challenger).")
@click.option("--actor", default=None, help="Who promotes (default: the OS user).")
@click.pass_context
def promote_cmd(ctx: click.Context, version: int | None, actor: str | None) -> None:
    """Move the champion alias, after re-checking the version's stored gate verdict."""
    from metarec.registry import promote

    cfg = config_of(ctx)
    done = _registry_call(promote, cfg.tracking, version=version, actor=actor)
    click.echo(f"{cfg.tracking.registered_model}: champion v{done.previous} -> v{done.version} "
               f"({done.actor}, {done.at})")


@click.command("rollback")
@click.option("--actor", default=None, help="Who rolls back (default: the OS user).")
@click.pass_context
def rollback_cmd(ctx: click.Context, actor: str | None) -> None:
    """Point champion back at the previous champion (from the promotion history)."""
    from metarec.registry import rollback

    cfg = config_of(ctx)
    done = _registry_call(rollback, cfg.tracking, actor=actor)
    click.echo(f"{cfg.tracking.registered_model}: champion rolled back v{done.previous} -> "
               f"v{done.version} ({done.actor}, {done.at})")
