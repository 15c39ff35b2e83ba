"""Adaptation curves of the default model and its baselines on a dataset of the suite, over seeds.

For a dataset (``ml100k``: the default MovieLens-100K; or a variant of ``benchmarks/suite``) and
each seed, runs the library stages in a temporary workspace: prepare (+ the variant's generator),
validate (GX), features, tasks, train the meta-model and the baselines, evaluate. Reads the
adaptation curves of the evaluation report (``curves[scenario][method][k][metric]``, k in 0, 1,
3, 5, 10, all) by metric name and writes, per scenario, method and k, the mean over seeds and
the spread (min..max, std) of MAE and nDCG@3 to ``benchmarks/results/curves_<dataset>.json``
and a markdown table beside it.

For ``lowrank`` it adds the oracle that knows the true factors (its MAE: the conditional median,
:func:`suite.oracle_predict`; its nDCG@3: ranked by the latent rating) on the same test tasks,
and the fraction of the item_mean -> oracle MAE gap each method closes at every k.

The variant dataset is generated once (``--variant-seed``); a seed changes the split, the task
draws, the initial weights and the curves' support subsets, so the seeds' test users differ and
are independent replicates of the whole procedure. Per seed, the report's paired bootstrap
(``--bootstrap`` resamples of its test tasks) gives the candidate minus each baseline at every k
with an interval; :func:`pooled_differences` combines them over seeds: the mean difference with
a stratified 95% interval (each seed a stratum: the normal interval of the mean, its standard
error sqrt(sum se_s^2) / S from each seed's bootstrap interval), and the best baseline at each k
and metric (the best mean value), so that the comparison rests on every seed's test users at
once, not on 58. Nothing is logged to MLflow.

``--pool A.json B.json ...`` trains nothing: it merges the per-seed runs of earlier result files
of the same dataset, protocol, candidate and overrides (distinct seeds; :func:`pool_results`)
and pools them as above, so that more seeds can be added to a reading without rerunning it.

    .venv/bin/python benchmarks/curves.py --dataset lowrank --seeds 0 --max-steps 400
    .venv/bin/python benchmarks/curves.py --dataset ml100k-5to500 --set meta.learner=maml
    .venv/bin/python benchmarks/curves.py --pool results/pooled/curves_ml100k_melu.json \
        results/pooled/curves_ml100k_melu_seeds5-9.json --out-dir results/pooled
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite  # noqa: E402
from ml100k_quality import _override  # noqa: E402  (one --set parser for every benchmark)

from metarec.config import Config, config_from_dict  # noqa: E402

METRICS = ("mae", "ndcg_at_3")
LOWER = {"mae"}  # lower is better
CI_LEVEL = 0.95
Z = 1.959964  # the normal quantile of CI_LEVEL's two-sided interval
BASE = "item_mean"  # the gap closed is measured from this baseline to the oracle
log = logging.getLogger("curves")


def _workspace_params(raw: dict[str, Any], ws: Path, raw_dir: Path, seed: int,
                      bootstrap: int = 1000) -> dict[str, Any]:
    """Every output of the run inside ``ws``; the embedding cache stays the repository's."""
    cache = Path(raw.get("features", {}).get("cache_dir", ".metarec-cache/embeddings"))
    return suite.merge(raw, {
        "seed": seed,
        "data": {"raw_dir": str(raw_dir), "prepared_dir": str(ws / "prepared")},
        "validation": {"out_dir": str(ws / "validation"), "data_docs": False},
        "features": {"out_dir": str(ws / "features"), "cache_dir": str(cache.resolve())},
        "tasks": {"out_dir": str(ws / "tasks"), "seed": None},
        "train": {"out_dir": str(ws / "train"), "progress": False},
        "evaluation": {"out_dir": str(ws / "evaluation"), "bootstrap_samples": bootstrap,
                       "ci_level": CI_LEVEL},
        # an empty registry of its own: no champion of the repository's is re-evaluated here
        "tracking": {"tracking_uri": f"sqlite:///{ws / 'mlflow.db'}",
                     "artifact_root": str(ws / "mlartifacts")},
    })


def build_inputs(cfg: Config, ws: Path):
    """The data stages of one seed in ``ws`` (prepare, validate, features, tasks); returns the
    training inputs (metarec.pipeline.inputs.Inputs)."""
    from metarec.data.prepare import prepare_dataset
    from metarec.data.validation import raise_if_failed, validate_tables
    from metarec.features.build import prepare_features
    from metarec.pipeline.inputs import load_inputs
    from metarec.pipeline.tasks import build_task_sets

    tables = prepare_dataset(cfg.data, root=ws)
    raise_if_failed(validate_tables(tables, cfg.validation, cfg.tasks, cfg.validation.out_dir))
    features = prepare_features(cfg.features, cfg.tasks, cfg.seed, tables)
    build_task_sets(cfg, tables, features)
    return load_inputs(cfg.features, cfg.tasks)


def run_seed(cfg: Config, ws: Path, truth: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The stages on one seed; returns the report's curves (as JSON) and the oracle's."""
    from metarec.pipeline.evaluate import evaluate_models
    from metarec.pipeline.train import train_baseline_models, train_meta_model

    t0 = time.time()
    inputs = build_inputs(cfg, ws)
    t1 = time.time()
    summary = train_meta_model(cfg, inputs, resume=False, track=False)
    baselines = train_baseline_models(cfg, inputs)
    t2 = time.time()
    evaluate_models(cfg, inputs)
    raw = json.loads((Path(cfg.evaluation.out_dir) / "report.json").read_text())
    out = {"curves": raw.get("curves", {}), "candidate": raw.get("candidate"),
           "differences": raw.get("curve_differences", {}),
           "tasks": {s: len(inputs.sets[s]) for s in inputs.scenarios},
           "training": {"steps": summary["steps"], "best_step": summary["best_step"],
                        "best_valid_mae": round(summary["best_valid_mae"], 4),
                        "criterion": summary.get("criterion", "valid_shots"),
                        "train_tasks": summary["train_tasks"],
                        "global_steps": baselines["global_steps"],
                        "head_factors": summary["model"]["head_factors"],
                        "head_factors_choice": summary.get("head_factors_choice")},
           "seconds": {"data": round(t1 - t0, 1), "train": round(t2 - t1, 1),
                       "evaluate": round(time.time() - t2, 1)}}
    if truth is not None:
        out["oracle"] = {s: oracle_metrics(truth, inputs.sets[s], inputs.features.item_ids)
                         for s in inputs.scenarios}
    return out


def oracle_metrics(truth: dict[str, np.ndarray], tasks, item_ids: np.ndarray) -> dict[str, float]:
    """The oracle on the query sets of ``tasks``: MAE of the conditional median, nDCG@3 of the
    latent rating (it ignores the support set, so one value serves every k)."""
    from metarec.evaluation.scoring import evaluate_predictions

    users = np.broadcast_to(tasks.user_ids[:, None], tasks.query_items.shape)
    items = item_ids[tasks.query_items]
    median = suite.oracle_predict(truth, users, items)
    score = suite.oracle_score(truth, users, items)
    mae = evaluate_predictions(median, tasks.query_ratings, tasks.query_mask, names=["mae"])
    ndcg = evaluate_predictions(score, tasks.query_ratings, tasks.query_mask,
                                names=["ndcg_at_3"])
    return {"mae": mae.metrics["mae"], "ndcg_at_3": ndcg.metrics["ndcg_at_3"]}


def _number(value: Any) -> float | None:
    """A curve cell as a float: a number, or a dict holding ``value``/``mean`` (a report that
    grew intervals); anything else (missing, NaN) is None."""
    if isinstance(value, dict):
        value = value.get("value", value.get("mean"))
    if isinstance(value, (int, float)) and np.isfinite(value):
        return float(value)
    return None


def _spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {"mean": round(float(a.mean()), 4), "min": round(float(a.min()), 4),
            "max": round(float(a.max()), 4), "std": round(float(a.std(ddof=0)), 4),
            "n": int(a.size)}


def _gap(method: float, base: float, oracle: float) -> float:
    """Fraction of the base -> oracle MAE gap a method closes (1 = oracle, 0 = base)."""
    return (base - method) / (base - oracle)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{scenario: {method: {k: {metric: spread}}}}`` over seeds, read by metric name, plus the
    oracle and the gap closed where the runs have an oracle."""
    out: dict[str, Any] = {}
    for scenario in runs[0]["curves"]:
        by_method: dict[str, Any] = {}
        for method in runs[0]["curves"][scenario]:
            by_k: dict[str, Any] = {}
            for k in runs[0]["curves"][scenario][method]:
                cells = {}
                for metric in METRICS:
                    vals = [_number(r["curves"][scenario][method][k].get(metric)) for r in runs
                            if k in r["curves"].get(scenario, {}).get(method, {})]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        cells[metric] = _spread(vals)
                if "oracle" in runs[0] and "mae" in cells and BASE in runs[0]["curves"][scenario]:
                    gaps = [_gap(_number(r["curves"][scenario][method][k]["mae"]),
                                 _number(r["curves"][scenario][BASE][k]["mae"]),
                                 r["oracle"][scenario]["mae"]) for r in runs]
                    cells["gap_closed"] = _spread(gaps)
                by_k[k] = cells
            by_method[method] = by_k
        if "oracle" in runs[0]:
            by_method["oracle"] = {"all": {m: _spread([r["oracle"][scenario][m] for r in runs])
                                           for m in METRICS}}
        out[scenario] = by_method
    return out


def _pool(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed paired differences ``{"diff", "interval"}`` -> their mean over seeds with the
    stratified normal interval (each seed's standard error from its bootstrap interval)."""
    diffs = np.array([c["diff"] for c in cells], float)
    mean = float(diffs.mean())
    out: dict[str, Any] = {"diff": round(mean, 4), "per_seed": [round(float(d), 4) for d in diffs],
                           "interval": None}
    if all(c.get("interval") is not None for c in cells):
        se = np.array([(c["interval"][1] - c["interval"][0]) / (2 * Z) for c in cells], float)
        half = Z * float(np.sqrt((se ** 2).sum())) / len(cells)
        out["interval"] = [round(mean - half, 4), round(mean + half, 4)]
    return out


def pooled_differences(runs: list[dict[str, Any]], curves: dict[str, Any]) -> dict[str, Any]:
    """``{scenario: {k: {metric: {"best_baseline", "diff", "interval", "per_seed", "vs"}}}}``.

    ``vs``: the candidate minus every baseline, pooled over the seeds (:func:`_pool`); the best
    baseline at k and metric is the one with the best mean value over seeds in ``curves``
    (:func:`aggregate`'s output), and its pooled difference is repeated at the top level.
    Scenarios, baselines, ks or metrics missing from any seed's report are skipped.
    """
    out: dict[str, Any] = {}
    for scenario, by_base in runs[0].get("differences", {}).items():
        by_k: dict[str, Any] = {}
        for k in next(iter(by_base.values()), {}):
            by_metric: dict[str, Any] = {}
            for metric in METRICS:
                vs = {}
                for base in by_base:
                    cells = [r.get("differences", {}).get(scenario, {}).get(base, {})
                             .get(k, {}).get(metric) for r in runs]
                    if all(isinstance(c, dict) and c.get("diff") is not None for c in cells):
                        vs[base] = _pool(cells)
                ranked = [(curves[scenario][b][k][metric]["mean"], b) for b in vs
                          if metric in curves.get(scenario, {}).get(b, {}).get(k, {})]
                if not ranked:
                    continue
                best = (min if metric in LOWER else max)(ranked)[1]
                by_metric[metric] = {"best_baseline": best, **vs[best], "vs": vs}
            by_k[k] = by_metric
        out[scenario] = by_k
    return out


POOL_KEYS = ("dataset", "protocol", "candidate", "overrides", "variant")


def seeds_tag(seeds: list[int]) -> str:
    """``[0, 1, ..., 9]`` -> ``seeds0-9``; ``[0, 2, 5]`` -> ``seeds0_2_5``."""
    s = sorted(seeds)
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"seeds{s[0]}-{s[-1]}"
    return "seeds" + "_".join(str(x) for x in s)


def pool_results(results: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """One result from several of :func:`main`'s result files: their per-seed runs side by
    side (sorted by seed), aggregated and pooled afresh. They must agree on ``POOL_KEYS``
    (what was run) and hold distinct seeds; each file's commit and date are kept. The pooled
    runs keep their differences, training and timing but not their curves (the source files
    hold them), so a pooled file is not pooled again."""
    if len(results) < 2:
        raise ValueError("--pool needs at least two result files")
    for src, res in zip(sources, results):
        if not isinstance(res, dict) or not isinstance(res.get("runs"), list) or not res["runs"]:
            raise ValueError(f"{src} is not a result of benchmarks/curves.py (no per-seed runs)")
        if "pooled_from" in res:
            raise ValueError(f"{src} is itself pooled (its runs keep no curves): pool the files "
                             f"it names in pooled_from instead")
    first = results[0]
    for src, res in zip(sources[1:], results[1:]):
        for key in POOL_KEYS:
            if res.get(key) != first.get(key):
                raise ValueError(f"cannot pool {src} with {sources[0]}: {key} differs "
                                 f"({res.get(key)!r} vs {first.get(key)!r})")
    runs = sorted((r for res in results for r in res["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"cannot pool: seed(s) {repeated} appear in more than one file")
    out = {key: first.get(key) for key in POOL_KEYS}
    out.update(seeds=seeds, metrics=list(METRICS),
               command="python benchmarks/curves.py --pool " + " ".join(sources),
               machine=first.get("machine"),
               git=" + ".join(str(res.get("git")) for res in results),
               date=" + ".join(str(res.get("date")) for res in results),
               wall_seconds=round(sum(float(res.get("wall_seconds") or 0) for res in results), 1),
               pooled_from=[{"file": src, "seeds": res.get("seeds"), "git": res.get("git"),
                             "command": res.get("command")}
                            for src, res in zip(sources, results)],
               curves=aggregate(runs))
    out["differences"] = pooled_differences(runs, out["curves"])
    # each run's own curves stay in its source file: the pooled file would double their size
    out["runs"] = [{k: v for k, v in r.items() if k != "curves"} for r in runs]
    return out


def _write(result: dict[str, Any], stem: Path) -> None:
    """The result's JSON and markdown beside it, each written atomically."""
    from metarec.io import atomic_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=1) + "\n"),
                         (".md", to_markdown(result))):
        with atomic_file(stem.with_suffix(suffix)) as fh:
            fh.write(text)


def _difference_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    iv = c["interval"]
    span = "" if iv is None else f" [{iv[0]:+.3f}, {iv[1]:+.3f}]"
    return f"{c['diff']:+.4f}{span} {c['best_baseline']}"


def _cell(c: dict[str, float] | None) -> str:
    if not c:
        return "-"
    if c["n"] == 1:
        return f"{c['mean']:.4f}"
    return f"{c['mean']:.4f} ({c['min']:.3f}..{c['max']:.3f})"


def to_markdown(result: dict[str, Any]) -> str:
    """Per scenario, one table per metric: methods as rows, support sizes k as columns."""
    lines = [f"# Adaptation curves: {result['dataset']} ({result['protocol']})", "",
             (f"Seeds {result['seeds']}; cells: mean over seeds (min..max). "
              f"Command: `{result['command']}`. Machine: {result['machine']}; "
              f"{result['date']}, git {result['git']}, {result['wall_seconds']:.0f} s wall."),
             ""]
    if result.get("variant"):
        lines += ["Variant: " + json.dumps(result["variant"]), ""]
    for run in result["runs"]:
        untrained = (" **no meta-training gain (best step 0): the pipeline's gate would refuse "
                     "this model**" if run["training"].get("best_step") == 0 else "")
        lines.append(f"- seed {run['seed']}: training {json.dumps(run['training'])}, "
                     f"seconds {json.dumps(run['seconds'])}{untrained}")
    lines.append("")
    for scenario, by_method in result["curves"].items():
        ks = sorted({k for c in by_method.values() for k in c if k != "all"}, key=int) + ["all"]
        tasks = result["runs"][0]["tasks"].get(scenario)
        for metric in (*METRICS, "gap_closed"):
            rows = [(m, c) for m, c in by_method.items() if any(metric in v for v in c.values())]
            if not rows:
                continue
            lines += [f"## {scenario} ({tasks} tasks): {metric}", "",
                      "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                      "|---|" + "---|" * len(ks)]
            for method, curve in rows:
                label = f"**{method}**" if method == result["candidate"] else method
                cells = [_cell(curve.get(k, {}).get(metric)) if method != "oracle"
                         else _cell(curve["all"].get(metric)) for k in ks]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    for scenario, by_k in result.get("differences", {}).items():
        ks = sorted((k for k in by_k if k != "all"), key=int) + (["all"] if "all" in by_k else [])
        lines += [f"## {scenario}: {result['candidate']} minus the best baseline, pooled over "
                  f"seeds (mean [{CI_LEVEL:.0%} stratified interval] baseline)", "",
                  "| metric | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for metric in METRICS:
            lines.append(f"| {metric} | " + " | ".join(
                _difference_cell(by_k[k].get(metric)) for k in ks) + " |")
        lines.append("")
    lines.append("mae: lower is better; ndcg_at_3 (MeLU's graded nDCG@3): higher is better."
                 + (" gap_closed: (item_mean MAE - method MAE) / (item_mean MAE - oracle MAE);"
                    " oracle: MAE of the conditional median given the true factors, nDCG@3 of"
                    " the latent rating (support-free: one value for every k)."
                    if any("oracle" in r for r in result["runs"]) else ""))
    return "\n".join(lines) + "\n"


def _machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
            f" (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"{_device()}")


def _device() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _dataset(args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], Path, Any]:
    """(params overrides, raw_dir, variant or None) of the requested dataset."""
    if args.dataset == "ml100k":
        data = Path(args.data_dir).resolve()
        if not (data / "ml-100k").is_dir():
            raise SystemExit(f"{data}/ml-100k missing: run `metarec data fetch` first")
        return {"data": {"dataset": "ml-100k"}}, data, None
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    variant = suite.generate(args.dataset, root / "data" / "csv", prepared=Path(args.prepared),
                             seed=args.variant_seed, **options)
    return variant.params, root / "data", variant


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml100k", choices=["ml100k", *suite.VARIANTS])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocol", choices=["user-split", "melu"], default="user-split")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--max-steps", type=int, default=None, help="train.max_steps (quick runs)")
    ap.add_argument("--prepared", default="artifacts/prepared",
                    help="canonical ML-100K tables (the ML-100K variants' source)")
    ap.add_argument("--data-dir", default="data", help="raw data dir holding ml-100k/ (ml100k)")
    ap.add_argument("--variant-seed", type=int, default=0, help="seed of the variant's generator")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="generator option, e.g. n_users=800 (lowrank)")
    ap.add_argument("--bootstrap", type=int, default=1000,
                    help="bootstrap resamples of each seed's test tasks (0: no intervals)")
    ap.add_argument("--work-dir", default=None, help="keep the workspace here (default: temp)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--pool", nargs="+", default=None, metavar="RESULT.json",
                    help="train nothing: pool the runs of these result files (distinct seeds)")
    args = ap.parse_args(argv)
    if args.pool:
        pooled = pool_results([json.loads(Path(f).read_text()) for f in args.pool], args.pool)
        suffix = "" if pooled["protocol"] == "user-split" else f"_{pooled['protocol']}"
        _write(pooled, Path(args.out_dir) / f"curves_{pooled['dataset']}{suffix}_"
                                            f"{seeds_tag(pooled['seeds'])}")
        print(to_markdown(pooled))
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    start = time.time()
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="metarec-curves-")).resolve()
    try:
        overrides, raw_dir, variant = _dataset(args, root)
        truth = suite.load_truth(variant.truth) if variant and variant.truth else None
        base = suite.merge(yaml.safe_load(Path(args.params).read_text()), overrides)
        base.setdefault("tasks", {})["protocol"] = args.protocol
        _override(base, args.set)
        if args.max_steps is not None:
            base.setdefault("train", {})["max_steps"] = args.max_steps
        runs = []
        for seed in args.seeds:
            ws = root / f"seed{seed}"
            cfg = config_from_dict(_workspace_params(base, ws, raw_dir, seed, args.bootstrap),
                                  args.params)
            log.info("seed %d: %s in %s", seed, args.dataset, ws)
            runs.append({"seed": seed, **run_seed(cfg, ws, truth)})
            log.info("seed %d done: %s", seed, runs[-1]["seconds"])
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    suffix = "" if args.protocol == "user-split" else f"_{args.protocol}"
    result = {"dataset": args.dataset, "protocol": args.protocol, "seeds": args.seeds,
              "candidate": runs[0]["candidate"], "metrics": list(METRICS),
              "command": "python benchmarks/curves.py " + " ".join(argv or sys.argv[1:]),
              "machine": _machine(), "git": _git_sha(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_seconds": round(time.time() - start, 1),
              "variant": variant.stats if variant else None,
              "overrides": {"set": args.set, "max_steps": args.max_steps,
                            "options": args.option},
              "curves": aggregate(runs), "runs": runs}
    result["differences"] = pooled_differences(runs, result["curves"])
    _write(result, Path(args.out_dir) / f"curves_{args.dataset}{suffix}")
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
