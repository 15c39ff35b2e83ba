"""MovieLens-100K as implicit feedback: full-catalog ranking of cold test users, per seed.

Ratings >= 4 are positives (Liang et al., WWW 2018); every other item is unobserved. For each
seed: the implicit features and tasks (``data.feedback: implicit``, the shipped
``data.implicit`` rule: 4 sampled negatives per positive, uniform), the configured meta-learner
trained with ``meta.loss: auto`` (bce) and the baselines (most_pop, item_knn, the global
network trained with the same loss, item_mean, user_mean, finetune), then
:func:`metarec.evaluation.scoring.evaluate_all` on the test users: after adapting to each
user's support positives (and their sampled negatives), every catalog item the user did not
interact with in support is ranked; relevant = the user's query positives. Recall@10, nDCG@10,
MRR (and HR@10) with 95% bootstrap intervals, paired differences to every baseline, at every
support size of ``evaluation.curve_shots`` and with the whole support.

    .venv/bin/python benchmarks/implicit_ml100k.py --seeds 0,1,2 --out benchmarks/results/implicit_ml100k.json
    .venv/bin/python benchmarks/implicit_ml100k.py --split valid --seeds 0 --set model.item_factors=32

Needs the prepared ML-100K tables (``metarec data prepare``; the pipeline run makes them).
Features and tasks are built under ``--work-dir/s<seed>``; the test users are read once, at
the end, for this report (nothing is tuned on them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.config import load_config
from metarec.config.implicit import implicit_evaluation, with_resolved_loss

log = logging.getLogger("implicit_ml100k")
HEADLINE = ("full_recall_at_10", "full_ndcg_at_10", "full_mrr", "full_hr_at_10")


def configure(params: str, seed: int, work_dir: Path, max_steps: int | None,
              assignments: list[str] = ()):
    from metarec.config import config_from_dict

    cfg = load_config(params)
    if assignments:  # section.key=value overrides (model/meta/train: not the tasks)
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from ml100k_quality import _override

        raw = cfg.to_dict()
        _override(raw, list(assignments))
        cfg = config_from_dict(raw, "--set")
    base = work_dir / f"s{seed}"
    ev = cfg.evaluation
    cfg = dataclasses.replace(
        cfg, seed=seed, data=dataclasses.replace(cfg.data, feedback="implicit"),
        features=dataclasses.replace(cfg.features, out_dir=str(base / "features")),
        tasks=dataclasses.replace(cfg.tasks, out_dir=str(base / "tasks")),
        train=dataclasses.replace(cfg.train, progress=False,
                                  max_steps=max_steps or cfg.train.max_steps),
        evaluation=implicit_evaluation(dataclasses.replace(
            ev, full_catalog=dataclasses.replace(ev.full_catalog, enabled=True))))
    return cfg


def run_seed(cfg, *, rebuild: bool, split: str = "test") -> dict[str, Any]:
    from metarec.data.tables import read_tables
    from metarec.evaluation.scoring import evaluate_all
    from metarec.features.build import prepare_features
    from metarec.pipeline.inputs import load_inputs
    from metarec.pipeline.tasks import build_task_sets
    from metarec.pipeline.train import build_estimator_and_learner
    from metarec.training.baselines import train_baselines
    from metarec.training.loop import meta_train, predict

    if rebuild or not (Path(cfg.tasks.out_dir) / "manifest.json").exists():
        tables = read_tables(cfg.data.prepared_dir)
        features = prepare_features(cfg.features, cfg.tasks, cfg.seed, tables, data=cfg.data)
        build_task_sets(cfg, tables, features)
    inputs = load_inputs(cfg.features, cfg.tasks)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, learner = build_estimator_and_learner(cfg, inputs.features)
    result = meta_train(model, learner, inputs.train, inputs.valid, cfg.train, cfg.seed)
    model.eval()
    timings[cfg.meta.learner] = time.perf_counter() - start
    start = time.perf_counter()
    baselines, global_result = train_baselines(
        inputs.features, inputs.train, inputs.valid, cfg.model,
        with_resolved_loss(cfg.meta, cfg.data), cfg.train, cfg.seed)
    timings["baselines"] = time.perf_counter() - start
    methods = {cfg.meta.learner: lambda t: predict(model, learner, t, cfg.train)}
    # The speed figure: one full-catalog scoring of the test users by the learner
    # (adapt + score every item + rank; median of 3 after a warm-up).
    from metarec.evaluation.catalog import Catalog, full_metric_names

    fc = cfg.evaluation.full_catalog
    catalog = Catalog(len(inputs.features.item_ids), fc.relevance_threshold, fc.chunk, cfg.seed)
    test = inputs.sets[inputs.scenarios[0]]
    names = full_metric_names(fc.metrics, fc.ks)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        catalog.scores(methods[cfg.meta.learner], test, names)
        times.append(time.perf_counter() - t0)
    timings["full_catalog_scoring"] = float(np.median(times[1:]))
    methods.update({n: b.predict for n, b in baselines.items()})
    start = time.perf_counter()
    names = inputs.scenarios if split == "test" else list(inputs.validation)
    report = evaluate_all(methods, {s: inputs.sets[s] for s in names},
                          cfg.meta.learner, cfg.evaluation, cfg.seed,
                          n_items=len(inputs.features.item_ids))
    timings["evaluation"] = time.perf_counter() - start
    out = report.to_dict()
    out["training"] = {
        "meta": {"best_step": result.best_step, "steps": result.steps,
                 "best_valid_1_minus_auc": round(result.best_valid_mae, 4)},
        "global": {"best_step": global_result.best_step, "steps": global_result.steps,
                   "best_valid_1_minus_auc": round(global_result.best_valid_mae, 4)},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "tasks": {n: len(t) for n, t in inputs.sets.items() if "@" not in n},
        "loss": with_resolved_loss(cfg.meta, cfg.data).loss}
    return out


def summary_table(per_seed: dict[int, dict[str, Any]], candidate: str) -> str:
    """Markdown: per method the mean over seeds (min..max) of each headline metric with the
    whole support, and the candidate's paired difference per seed with its interval."""
    first = next(iter(per_seed.values()))
    scenario = next(iter(first["metrics"]))
    methods = list(first["metrics"][scenario])
    lines = ["| method | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for m in methods:
        cells = []
        for metric in HEADLINE:
            vals = [r["metrics"][scenario][m].get(metric) for r in per_seed.values()]
            vals = [v for v in vals if v is not None]
            cells.append(f"{np.mean(vals):.4f} ({min(vals):.4f}..{max(vals):.4f})" if vals else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{candidate} minus baseline with the whole support, per seed: diff "
                 "[95% paired bootstrap interval]")
    lines.append("")
    lines.append("| baseline | metric | " + " | ".join(f"seed {s}" for s in per_seed) + " |")
    lines.append("|---|---|" + "---|" * len(per_seed))
    for b in methods:
        if b == candidate:
            continue
        for metric in HEADLINE[:3]:
            cells = []
            for r in per_seed.values():
                d = r["curve_differences"][scenario][b]["all"].get(metric)
                if d is None:
                    cells.append("-")
                    continue
                iv = d["interval"]
                cells.append(f"{d['diff']:+.4f} [{iv[0]:+.4f}, {iv[1]:+.4f}]" if iv
                             else f"{d['diff']:+.4f}")
            lines.append(f"| {b} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(per_seed: dict[int, dict[str, Any]], candidate: str,
                metric: str = "full_recall_at_10") -> str:
    """Markdown: ``metric`` along the adaptation curve (support positives 0, 1, 3, ..., all),
    mean over seeds per method, and per baseline how many seeds have the candidate ahead
    (+) or behind (-) beyond the 95% paired interval."""
    first = next(iter(per_seed.values()))
    scenario = next(iter(first["curves"]))
    methods = list(first["curves"][scenario])
    shots = list(first["curves"][scenario][candidate])
    lines = [f"{metric} by support size (positives known; mean over {len(per_seed)} seeds; "
             f"[+a/-b]: seeds where {candidate} is ahead / behind beyond the interval)", "",
             "| method | " + " | ".join(shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for m in methods:
        cells = []
        for k in shots:
            vals = [r["curves"][scenario][m][k].get(metric) for r in per_seed.values()]
            vals = [v for v in vals if v is not None]
            cell = f"{np.mean(vals):.4f}" if vals else "-"
            if m != candidate and vals:
                diffs = [r["curve_differences"][scenario][m][k].get(metric)
                         for r in per_seed.values()]
                ahead = sum(1 for d in diffs if d and d["interval"] and d["interval"][0] > 0)
                behind = sum(1 for d in diffs if d and d["interval"] and d["interval"][1] < 0)
                cell += f" [+{ahead}/-{behind}]"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--work-dir", default="artifacts/bench/implicit")
    ap.add_argument("--rebuild", action="store_true", help="rebuild features and tasks")
    ap.add_argument("--split", choices=["valid", "test"], default="test",
                    help="valid: score the early-stopping users (choose settings there); "
                         "test: the test users, read once for the report")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a params value (YAML syntax), repeatable")
    ap.add_argument("--out", default=None, help="write the JSON here (and a .md beside it)")
    ap.add_argument("--summarise", default=None, metavar="JSON",
                    help="only print the tables of a JSON this script wrote")
    args = ap.parse_args(argv)
    if args.summarise:
        per_seed = {int(k): v for k, v in json.loads(Path(args.summarise).read_text()).items()}
        cand = next(iter(per_seed.values()))["candidate"]
        print(summary_table(per_seed, cand) + "\n\n" + curve_table(per_seed, cand) + "\n\n"
              + curve_table(per_seed, cand, "full_ndcg_at_10"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    per_seed: dict[int, dict[str, Any]] = {}
    candidate = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = configure(args.params, seed, Path(args.work_dir), args.max_steps, args.set)
        candidate = cfg.meta.learner
        per_seed[seed] = run_seed(cfg, rebuild=args.rebuild, split=args.split)
        log.info("seed %d: %s", seed, json.dumps(per_seed[seed]["training"]))
    table = (summary_table(per_seed, candidate) + "\n\n" + curve_table(per_seed, candidate)
             + "\n\n" + curve_table(per_seed, candidate, "full_ndcg_at_10"))
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({str(k): v for k, v in per_seed.items()}, indent=1) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
