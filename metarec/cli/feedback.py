"""`metarec feedback add|show` (the event store) and `metarec data ingest` (events -> data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from metarec.cli.common import config_of, reported


@click.group()
def feedback() -> None:
    """Rating events: append them to the event store, show a user's stored profile."""


@feedback.command("add")
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Default: from the file name (.csv, else JSON lines); '-' reads JSON lines "
                   "from standard input.")
@click.pass_context
def feedback_add(ctx: click.Context, source: Path, fmt: str | None) -> None:
    """Append the events of SOURCE (CSV with a header row, or JSON lines) as one batch.

    Fields: event_id, user_id, item_id, rating, timestamp (Unix seconds or ISO 8601; default
    now), user_features (a JSON object). The batch is stored whole or not at all; event ids
    already stored are ignored. A malformed event is an error naming its field.
    """
    from metarec.feedback.events import EventError, IntakeRules, parse_events, read_event_records
    from metarec.feedback.store import EventStore

    cfg = config_of(ctx)
    fmt = fmt or ("csv" if source.suffix.lower() == ".csv" else "jsonl")
    name = "stdin" if str(source) == "-" else str(source)
    with reported(EventError):
        text = sys.stdin.read() if str(source) == "-" else source.read_text(encoding="utf-8")
        records = read_event_records(text, fmt, name)
        events = parse_events(records, IntakeRules.from_config(cfg.validation, cfg.feedback),
                              where=name)
        store = EventStore.from_config(cfg.feedback)
        result = store.add(events)
    click.echo(f"{result.added} of {result.received} events stored in {store.describe()} "
               f"({len(result.duplicates)} already there, ignored); newest seq "
               f"{result.last_seq}")


@feedback.command("show")
@click.argument("user_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def feedback_show(ctx: click.Context, user_id: int, as_json: bool) -> None:
    """A user's stored profile: the newest rating per item (newest first) and attributes."""
    from metarec.feedback.store import EventStore

    cfg = config_of(ctx)
    with reported():
        store = EventStore.from_config(cfg.feedback)
        ratings = store.user_ratings(user_id)
        features = store.user_features(user_id)
    if as_json:
        click.echo(json.dumps({"user_id": user_id, "features": features, "ratings": [
            r.__dict__ for r in ratings]}, indent=2))
        return
    click.echo(f"user {user_id}: {len(ratings)} rated items; attributes {features or '-'}")
    for r in ratings:
        click.echo(f"  item {r.item_id}: {r.rating:g} at {r.timestamp} (event {r.event_id})")


@click.command("ingest")
@click.option("--until", type=int, default=None,
              help="Fold events up to this store seq (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ingest_cmd(ctx: click.Context, until: int | None, as_json: bool) -> None:
    """Fold new feedback events into data/ and record the new version in data.dvc.

    Events after the data version's watermark pass the events contract (GX); failing ones are
    quarantined with their reasons (data/feedback/quarantine.csv), the rest folded in. Commit
    data.dvc afterwards; the new-data sensor starts `retrain`.
    """
    from metarec.feedback.ingest import ingest
    from metarec.pipeline.workspace import workspace_lock

    cfg = config_of(ctx)
    with reported(), workspace_lock("metarec data ingest"):
        res = ingest(cfg)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    elif not res.changed:
        click.echo(f"nothing to ingest: no events after watermark {res.watermark}; "
                   f"{cfg.data.dvc_file} stays {res.md5}")
    else:
        click.echo(f"ingested events {res.watermark_before + 1}..{res.watermark}: "
                   f"{res.accepted} folded in, {res.quarantined} quarantined "
                   f"({cfg.data.raw_dir}/{cfg.feedback.folder}/quarantine.csv); "
                   f"{cfg.data.dvc_file} now {res.md5} (commit it)")
    if res.recovered:
        click.echo(f"note: {res.recovered}")
