"""K-fold cross-validation over the training + validation users, for tuning.

The protocol's test users are never read: the training and validation tasks are pooled and
split into ``--folds`` folds of users (users with ``tasks.max_ratings`` ratings or more only
train); each fold is held out once and scored while the others train, early stopping on 10%
of the training users (``--stop-fraction``; 0: on the held-out users, the optimistic former
protocol) (:mod:`metarec.tuning.cv`, shared with `metarec tune`, which searches settings
automatically; this script compares settings named by hand). The held-out tasks are scored
along the adaptation curve: with
their support cut to each of ``evaluation.curve_shots`` random ratings (0, 1, 3, 5, 10; the
evaluation's ``limit_support``) and with all of it (``all``). Prints, per support size and
method, the mean of every metric over all held-out tasks and the paired difference to each
baseline (candidate minus baseline, with its standard error over tasks), so that settings can
be compared on ~5x more users than one validation set, and a markdown table of MAE / nDCG@3.

``--dataset`` runs on a variant of ``benchmarks/suite`` instead of the configured dataset (the
variant is generated from ``--prepared`` into ``--work-dir/<variant>``, prepared, validated, and
its features and tasks built there), or on several: ``--dataset suite`` (ml100k and every
variant) or a comma-separated list; the output is then one table per dataset plus ``suite``,
each paired difference averaged over the datasets with equal weight (and the per-dataset means),
to choose defaults that hold across the suite. The protocol's test users are never read on any
dataset. ``--seeds`` trains every method once per training seed on the same folds and averages
each held-out task's scores over them, so that a comparison is net of the training noise (the
split's own noise remains: ``--set seed=S`` redraws the split and with it the folds).

    .venv/bin/python benchmarks/cv_tune.py --folds 4 --set model.item_id=true
    .venv/bin/python benchmarks/cv_tune.py --dataset lowrank --set model.item_factors=32
    .venv/bin/python benchmarks/cv_tune.py --dataset suite --folds 3 --out cv_suite.json
    .venv/bin/python benchmarks/cv_tune.py --dataset ml100k-quintile --folds 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ml100k_quality as mq  # noqa: E402
import suite  # noqa: E402

from metarec.config import config_from_dict  # noqa: E402
from metarec.evaluation.report import ALL_SHOTS  # noqa: E402
from metarec.training.ranking_baselines import RANKING_BASELINES  # noqa: E402
from metarec.tuning import cv  # noqa: E402

PAIRED = ("mae", "ndcg_at_3", "ndcg_at_5", "precision_at_5")


def _table(out: dict[str, dict], shots: list[str], methods: list[str]) -> str:
    """Markdown: one row per method, MAE / nDCG@3 per support size."""
    rows = ["| method | " + " | ".join(shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for m in methods:
        rows.append(f"| {m} | " + " | ".join(
            f"{out[k][m]['mae']:.3f} / {out[k][m]['ndcg_at_3']:.3f}" for k in shots) + " |")
    return "\n".join(rows)


def variant_params(raw: dict[str, Any], name: str, prepared: Path, work: Path,
                   protocol: str, seed: int = 0) -> dict[str, Any]:
    """Generate variant ``name`` afresh under ``work`` and prepare + validate it; returns the
    params (``raw`` + the variant's overrides) whose data, features and tasks live there."""
    from metarec.data.prepare import prepare_dataset
    from metarec.data.validation import raise_if_failed, validate_tables

    shutil.rmtree(work, ignore_errors=True)
    variant = suite.generate(name, work / "data" / "csv", prepared=prepared, seed=seed)
    base = work / protocol  # where mq._inputs builds features and tasks
    out = suite.merge(raw, variant.params)
    out = suite.merge(out, {
        "data": {"raw_dir": str(work / "data"), "prepared_dir": str(work / "prepared")},
        "validation": {"out_dir": str(work / "validation"), "data_docs": False},
        "features": {"out_dir": str(base / "features")},
        "tasks": {"out_dir": str(base / "tasks")}})
    cfg = config_from_dict(out, f"{name} params")
    tables = prepare_dataset(cfg.data)
    raise_if_failed(validate_tables(tables, cfg.validation, cfg.tasks))
    return out


def fold_arguments(ap: argparse.ArgumentParser, work_dir: str, folds: int = 3) -> None:
    """The diagnostics' common options, read back by :func:`fold_setup`: --dataset, --folds,
    --set, --params, --prepared, --work-dir and --out."""
    ap.add_argument("--dataset", default="ml100k", choices=["ml100k", *suite.VARIANTS])
    ap.add_argument("--folds", type=int, default=folds)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="artifacts/prepared")
    ap.add_argument("--work-dir", default=work_dir)
    ap.add_argument("--out", required=True)


def fold_setup(dataset: str, work: Path, sets: list[str], folds: int, shots: tuple | None = None,
               params: str = "params.yaml", prepared: str = "artifacts/prepared",
               overrides: dict[str, Any] | None = None):
    """The diagnostics' common start: ``params`` (no progress bar, user-split) on ``dataset``
    ("ml100k" or a suite variant, generated under ``work``/<variant>), merged with ``overrides``
    and then the ``--set`` strings ``sets``; builds the features and tasks under ``work`` and
    splits the training + validation users into ``folds`` CV folds scored at ``shots`` (default:
    ``evaluation.curve_shots`` and all). Returns (config, inputs, folds); the test users are never read."""
    raw = yaml.safe_load(Path(params).read_text())
    raw.setdefault("train", {})["progress"] = False
    raw.setdefault("tasks", {})["protocol"] = "user-split"
    work = Path(work).resolve()
    if dataset != "ml100k":
        work = work / dataset
        raw = variant_params(raw, dataset, Path(prepared), work, "user-split")
    raw = suite.merge(raw, overrides or {})
    mq._override(raw, sets)
    cfg, inputs = mq._inputs(config_from_dict(raw, params), work)
    shots = (*cfg.evaluation.curve_shots, ALL_SHOTS) if shots is None else shots
    return cfg, inputs, cv.make_folds(cv.pool_tasks(inputs), folds, shots, cfg.seed)


def fold_scores(pred: np.ndarray, fold: cv.Fold, metrics: list[str]) -> dict[str, np.ndarray]:
    """``{metric: (shots, held)}``: a fold curve's per-task scores, one row per support size."""
    values = cv.per_task_metrics(pred, fold.curve, metrics)
    return {k: v.reshape(len(fold.shots), len(fold.held)) for k, v in values.items()}


def paired_to(per_fold: dict[str, list[dict[str, np.ndarray]]], shots: list[str],
              metrics: list[str], base: str = "ridge") -> dict[str, dict]:
    """The diagnostics' table: ``{shot: {method: {metric: mean, "minus <base>": {metric:
    "diff ± se"}}}}`` over the folds' held-out users side by side (``per_fold``: ``{method:
    [per fold {metric: (shots, held)}]}``), each difference paired with ``base``."""
    stacked = {m: {k: np.concatenate([f[k] for f in folds], 1) for k in metrics}
               for m, folds in per_fold.items()}
    out: dict[str, dict] = {}
    for i, shot in enumerate(shots):
        out[shot] = {}
        for method, values in stacked.items():
            out[shot][method] = {k: round(float(np.nanmean(values[k][i])), 4) for k in metrics}
            if method != base:
                out[shot][method][f"minus {base}"] = {
                    k: "%+.4f ± %.4f" % cv.paired(values[k][i], stacked[base][k][i])
                    for k in metrics}
    return out


def emit(out: dict[str, Any], path: str | None) -> None:
    """Print a diagnostic's JSON result and write it to ``path`` when given."""
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


def average_over_seeds(per_seed: list[dict[str, list[dict[str, np.ndarray]]]]
                       ) -> dict[str, dict[str, np.ndarray]]:
    """``[{method: [per fold {metric: (shots, held)}]}]`` per training seed -> ``{method:
    {metric: (shots, tasks)}}``: the folds' held-out tasks side by side, each task's score the
    mean over the seeds (the same tasks and support subsets in every seed, so the paired
    differences stay paired and their standard error is over users, with the training noise
    averaged out). Methods missing from a seed are dropped."""
    methods = [m for m in per_seed[0] if all(m in run for run in per_seed)]
    return {m: {k: np.mean([np.concatenate([f[k] for f in run[m]], 1) for run in per_seed], 0)
                for k in per_seed[0][m][0]} for m in methods}


def cross_validate(raw: dict[str, Any], source: str, folds: int, learners: str | None,
                   work_dir: Path, stop_fraction: float = cv.STOP_FRACTION,
                   seeds: list[int] | None = None,
                   scores_out: Path | None = None) -> dict[str, Any]:
    """Per support size: means per method over the held-out folds and paired differences to
    each baseline (``{shot: {method | "cand - base": {metric: ...}}}``, plus ``"_table"``).
    The folds and the per-task scores are metarec.tuning.cv's, as `metarec tune` uses them.
    ``seeds``: training seeds (default: the configured seed); with several, every learner and
    baseline trains once per seed on the same folds and each held-out task's scores are
    averaged over the seeds (:func:`average_over_seeds`): a setting's effect net of the
    training noise. The split and the folds stay those of the configured seed."""
    cfg = config_from_dict(raw, source)
    cfg, inputs = mq._inputs(cfg, work_dir)
    names = learners.split(",") if learners else [cfg.meta.learner]
    shots = (*cfg.evaluation.curve_shots, ALL_SHOTS)
    layout = cv.make_folds(cv.pool_tasks(inputs), folds, shots, cfg.seed,
                           stop_fraction=stop_fraction)
    per_seed: list[dict[str, list[dict[str, np.ndarray]]]] = []
    for seed in seeds or [cfg.seed]:
        run_cfg = dataclasses.replace(cfg, seed=seed)
        per_task: dict[str, list[dict[str, np.ndarray]]] = {}
        for fold in layout:
            predictors, info = {}, {}
            for name in names:
                predictors[name], info[name] = cv.train_learner(run_cfg, inputs.features,
                                                                fold.train, fold.stop, name)
            found, info["global"] = cv.train_fold_baselines(run_cfg, inputs.features,
                                                            fold.train, fold.stop)
            # most_pop / item_knn score without rating scale: no MAE for them on ratings
            predictors.update({n: p for n, p in found.items()
                               if fold.train.implicit or n not in RANKING_BASELINES})
            print(f"seed {seed} fold {fold.index}: " + json.dumps(info), file=sys.stderr)
            for method, predict in predictors.items():
                per_task.setdefault(method, []).append(cv.fold_scores(predict, fold,
                                                                      list(PAIRED)))
        per_seed.append(per_task)
    labels = layout[0].shots
    out: dict[str, Any] = {}
    stacked = average_over_seeds(per_seed)  # (len(shots), tasks) per metric
    methods = list(stacked)
    if scores_out is not None:  # per-task scores, for a paired comparison of two settings
        np.savez(scores_out, shots=np.asarray(layout[0].shots),
                 **{f"{m}/{k}": v for m, by in stacked.items() for k, v in by.items()})
    for i, shot in enumerate(labels):
        out[shot] = {m: {k: round(float(v[i].mean()), 4) for k, v in stacked[m].items()}
                     for m in methods}
        for cand in names:
            for base in methods:
                if base == cand:
                    continue
                diffs = {}
                for k in PAIRED:
                    mean, se = cv.paired(stacked[cand][k][i], stacked[base][k][i])
                    diffs[k] = f"{mean:+.4f} ± {se:.4f}"
                out[shot][f"{cand} - {base}"] = diffs
    out["_table"] = _table(out, list(labels), methods)
    return out


def compare_scores(a: Path, b: Path, method: str = "ridge") -> dict[str, Any]:
    """``method``'s per-task scores of two ``--scores`` files (two settings on the same folds
    and the same held-out tasks): the paired difference a - b with its standard error over the
    tasks, per support size and metric."""
    za, zb = np.load(a), np.load(b)
    if list(za["shots"]) != list(zb["shots"]):
        raise SystemExit(f"{a} and {b} hold different support sizes")
    out: dict[str, Any] = {}
    for i, shot in enumerate(za["shots"]):
        out[str(shot)] = {}
        for k in PAIRED:
            x, y = za[f"{method}/{k}"][i], zb[f"{method}/{k}"][i]
            if x.shape != y.shape:
                raise SystemExit(f"{a} and {b} hold different tasks (not the same folds)")
            mean, se = cv.paired(x, y)
            out[str(shot)][k] = f"{mean:+.4f} ± {se:.4f}"
    return out


def suite_summary(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each paired difference at each support size averaged over the datasets (equal weight),
    with the per-dataset means: ``{shot: {"ridge - item_mean": {"mae": {"mean": ..., ...}}}}``."""
    first = next(iter(tables.values()))
    out: dict[str, Any] = {}
    for shot in (s for s in first if not s.startswith("_")):
        out[shot] = {}
        for pair in (p for p in first[shot] if " - " in p):
            out[shot][pair] = {}
            for metric in PAIRED:
                per = {d: float(t[shot][pair][metric].split(" ± ")[0])
                       for d, t in tables.items() if pair in t.get(shot, {})}
                out[shot][pair][metric] = {"mean": round(float(np.mean(list(per.values()))), 4),
                                           **per}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--protocol", choices=["user-split", "melu", "configured"], default="user-split")
    ap.add_argument("--dataset", default="configured",
                    help="configured (params.yaml's, e.g. ml100k), a suite variant "
                    f"({', '.join(suite.VARIANTS)}), a comma-separated list, or suite")
    ap.add_argument("--prepared", default="artifacts/prepared",
                    help="canonical ML-100K tables the ML-100K variants are made from")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--stop-fraction", type=float, default=cv.STOP_FRACTION,
                    help="share of each fold's training users early stopping looks at; 0: the "
                         "held-out users themselves (before 2026-12-02: optimistic)")
    ap.add_argument("--learners", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds, each task's scores averaged over them (default: the "
                         "configured seed); the folds stay the configured seed's")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--work-dir", default="artifacts/bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--scores", default=None, metavar="FILE.npz",
                    help="also save every method's per-task scores (one dataset)")
    ap.add_argument("--compare", nargs=2, default=None, metavar=("A.npz", "B.npz"),
                    help="train nothing: the ridge learner's paired differences A - B of two "
                         "--scores files (two settings on the same folds)")
    args = ap.parse_args(argv)
    if args.compare:
        print(json.dumps(compare_scores(Path(args.compare[0]), Path(args.compare[1])), indent=1))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    datasets = (["ml100k", *suite.VARIANTS] if args.dataset == "suite"
                else args.dataset.split(","))
    unknown = [d for d in datasets if d not in ("configured", "ml100k", *suite.VARIANTS)]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; choose from configured, ml100k, "
                         f"{', '.join(suite.VARIANTS)} or suite")
    raw = yaml.safe_load(Path(args.params).read_text())
    if args.protocol != "configured":
        raw.setdefault("tasks", {})["protocol"] = args.protocol
    raw.setdefault("train", {})["progress"] = False
    protocol = raw.get("tasks", {}).get("protocol", "user-split")
    tables: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        params, work = raw, Path(args.work_dir)
        if dataset in suite.VARIANTS:
            work = Path(args.work_dir).resolve() / "suite" / dataset
            params = variant_params(raw, dataset, Path(args.prepared), work, protocol)
        params = suite.merge(params, {})
        mq._override(params, args.set)  # --set wins over the variant's params
        print(f"dataset {dataset}", file=sys.stderr)
        tables[dataset] = cross_validate(params, args.params, args.folds, args.learners, work,
                                         args.stop_fraction, args.seeds,
                                         None if args.scores is None or len(datasets) > 1
                                         else Path(args.scores))
    out: dict[str, Any] = (next(iter(tables.values())) if len(tables) == 1
                           else {**tables, "suite": suite_summary(tables)})
    tables_md = {d: t.pop("_table") for d, t in tables.items()}
    text = json.dumps(out, indent=1)
    print(text)
    for dataset, table in tables_md.items():
        print(f"\n{dataset}\n{table}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
