"""`metarec recommend` and `metarec serve`: answers from an exported model (ONNX Runtime)."""

from __future__ import annotations

import json

import click

from metarec.cli.common import config_of, reported


def _parse_ratings(text: str) -> dict[int, float]:
    """``"50:5,172:4"`` -> {50: 5.0, 172: 4.0}."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        item, sep, rating = part.partition(":")
        try:
            if not sep:
                raise ValueError
            out[int(item)] = float(rating)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not ITEM_ID:RATING", param_hint="--ratings")
    return out


@click.command("recommend")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.option("--user", "user_json", default=None, help='User attributes as JSON, e.g. \'{"age": 25}\'.')
@click.option("--ratings", default="", help="ITEM_ID:RATING pairs, comma separated (e.g. 50:5,172:4).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--include-seen", is_flag=True, help="Also rank the items rated in --ratings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def recommend_cmd(ctx: click.Context, model_uri: str | None, user_json: str | None, ratings: str,
                  k: int, include_seen: bool, as_json: bool) -> None:
    """Adapt to a few ratings and print the top-k items with their scores."""
    from metarec.serve import Recommender, RequestError, catalog_options

    cfg = config_of(ctx)
    try:
        user = json.loads(user_json) if user_json else None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--user") from None
    if user is not None and not isinstance(user, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--user")
    with reported(RequestError):
        rec = Recommender.load(model_uri or cfg.serve.model_uri,
                               tracking_uri=cfg.tracking.tracking_uri, threads=cfg.serve.threads,
                               max_ratings=cfg.serve.max_ratings, catalog_dir=cfg.catalog.dir,
                               **catalog_options(cfg.catalog))
        items = rec.recommend(user, _parse_ratings(ratings), k=k, exclude_seen=not include_seen)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], indent=2))
        return
    for rank, item in enumerate(items, 1):
        click.echo(f"{rank:>3}. {item.score:6.3f}  {item.title or '?'} (item {item.item_id})")


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default: serve.host). Anything but "
              "loopback needs a token ($METAREC_SERVE_TOKEN or serve.token).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default: serve.port.")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes, each loading the model (default: serve.workers; "
                   "0: one per CPU core).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, model_uri: str | None,
              workers: int | None) -> None:
    """Serve POST /recommend, POST /feedback, GET /users/ID, GET /health, POST /reload
    (docs at /docs) with uvicorn."""
    from metarec.serving.profiles import Profiles
    from metarec.serving.run import run_server

    cfg = config_of(ctx)
    with reported():
        run_server(cfg.serve, model_uri=model_uri or cfg.serve.model_uri,
                   tracking_uri=cfg.tracking.tracking_uri, host=host or cfg.serve.host,
                   port=cfg.serve.port if port is None else port,
                   workers=cfg.serve.workers if workers is None else workers,
                   catalog=cfg.catalog, profiles=Profiles(cfg.feedback, cfg.validation))
