"""`metarec items add | retire | show`: the item catalog, changed without retraining."""

from __future__ import annotations

import json

import click

from metarec.cli.common import config_of, reported


def _ids(text: str) -> list[int]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(int(part))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not an item id", param_hint="--ids") from None
    if not out:
        raise click.BadParameter("give at least one item id", param_hint="--ids")
    return out


def _echo(change, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(change.to_dict(), indent=2))
        return
    what = (f"added {len(change.added)}" if change.added else f"retired {len(change.retired)}")
    click.echo(f"catalog version {change.version}: {what} item(s); {change.catalog['items']} "
               f"items, {change.catalog['active']} recommendable -> {change.folder}")
    if change.mlflow:
        click.echo(f"logged beside {change.mlflow['name']} version {change.mlflow['version']} "
                   f"(run {change.mlflow['run_id']}, {change.mlflow['path']})")


@click.group("items")
def items() -> None:
    """The item catalog: add new items, retire items, show the current version."""


@items.command("add")
@click.option("--items", "items_path", required=True,
              type=click.Path(dir_okay=False, exists=True),
              help="CSV or Parquet file of new items (the dataset's column mapping).")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def add_cmd(ctx: click.Context, items_path: str, model_uri: str | None, as_json: bool) -> None:
    """Check, embed and encode new items; write them as a new catalog version."""
    from metarec.catalog.items import ItemsError
    from metarec.catalog.ops import add_items

    cfg = config_of(ctx)
    with reported(ItemsError):
        change = add_items(cfg, items_path, model_uri)
    _echo(change, as_json)


@items.command("retire")
@click.option("--ids", "ids", required=True, help="Item ids, comma separated (e.g. 50,172).")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def retire_cmd(ctx: click.Context, ids: str, model_uri: str | None, as_json: bool) -> None:
    """Never recommend these items again (they stay accepted as support ratings)."""
    from metarec.catalog.ops import retire_items

    cfg = config_of(ctx)
    with reported():
        change = retire_items(cfg, _ids(ids), model_uri)
    _echo(change, as_json)


@items.command("show")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.pass_context
def show_cmd(ctx: click.Context, model_uri: str | None) -> None:
    """The latest catalog version of the model, as JSON."""
    from metarec.catalog.ops import open_model

    cfg = config_of(ctx)
    with reported(), open_model(model_uri or cfg.serve.model_uri,
                                cfg.tracking.tracking_uri) as model:
        store = model.store(cfg.catalog.dir)
        catalog = store.read()
        out = {**catalog.describe(), "folder": str(store.path(catalog.version)),
               "parent": catalog.manifest.get("parent"),
               "changes": catalog.manifest.get("changes"),
               "created_at": catalog.manifest.get("created_at")}
    click.echo(json.dumps(out, indent=2))
