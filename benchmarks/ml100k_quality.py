"""Quality of every learner and baseline on MovieLens-100K, as a JSON table.

Trains the configured meta-learners and the four baselines (user_mean, item_mean, global,
finetune) on the training tasks of a protocol, early-stopping on its validation tasks, and
prints ``{scenario: {method: {mae, rmse, ndcg_at_3, ndcg_at_5, precision_at_5, ...}}}`` with
the metric functions of metarec.evaluation.metrics (ndcg_at_k: MeLU's graded nDCG; precision_at_k and
recbole_ndcg_at_k: the RecBole-MetaRec definitions).

Scenarios: with ``--split test`` every evaluation set of the protocol (user-split: ``test``;
melu: ``user_cold``, ``item_cold``, ``user_item_cold``); with ``--split valid`` the validation
set only (``valid`` / ``warm_valid``): tune on that, report test.

Features and tasks come from ``features.out_dir`` / ``tasks.out_dir`` when they were built for
the requested protocol; otherwise they are built (from ``data.prepared_dir``) under
``--work-dir/<protocol>``.

    .venv/bin/python benchmarks/ml100k_quality.py --protocol user-split --split test
    .venv/bin/python benchmarks/ml100k_quality.py --protocol melu --split test \\
        --learners melu,metasgd --out melu.json
    .venv/bin/python benchmarks/ml100k_quality.py --split valid --set meta.inner_lr=0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from metarec.config import Config, config_from_dict
from metarec.data.arrays import TaskArrays
from metarec.evaluation.scoring import evaluate_predictions
from metarec.pipeline.inputs import Inputs, load_inputs

METRICS = ["mae", "rmse", "ndcg_at_3", "ndcg_at_5", "precision_at_5", "recbole_ndcg_at_5"]
log = logging.getLogger("ml100k_quality")


def _override(raw: dict[str, Any], assignments: list[str]) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw params mapping."""
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        *path, leaf = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)


def _inputs(cfg: Config, work_dir: Path) -> tuple[Config, Inputs]:
    """Features and tasks of cfg.tasks.protocol: the configured ones, or built under work_dir."""
    manifest = Path(cfg.tasks.out_dir) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("protocol") == cfg.tasks.protocol:
        return cfg, load_inputs(cfg.features, cfg.tasks)
    from metarec.data.tables import read_tables
    from metarec.pipeline.tasks import build_task_sets
    from metarec.features.build import prepare_features

    base = work_dir / cfg.tasks.protocol
    cfg = dataclasses.replace(
        cfg, features=dataclasses.replace(cfg.features, out_dir=str(base / "features")),
        tasks=dataclasses.replace(cfg.tasks, out_dir=str(base / "tasks")))
    if not (base / "tasks" / "manifest.json").exists():
        log.info("building %s features and tasks under %s", cfg.tasks.protocol, base)
        tables = read_tables(cfg.data.prepared_dir)
        features = prepare_features(cfg.features, cfg.tasks, cfg.seed, tables)
        build_task_sets(cfg, tables, features)
    return cfg, load_inputs(cfg.features, cfg.tasks)


def run(cfg: Config, inputs: Inputs, learners: list[str], split: str,
        baselines: bool = True) -> dict[str, dict[str, Any]]:
    """Train ``learners`` (+ baselines) and evaluate them; returns the metric table (per-task
    scores over folds of users: metarec.tuning.cv, used by cv_tune.py)."""
    from metarec.training.baselines import train_baselines
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model
    from metarec.training.loop import meta_train, predict

    train, valid = inputs.train, inputs.valid
    scenarios = {n: inputs.sets[n] for n in inputs.validation} if split == "valid" else \
        {n: inputs.sets[n] for n in inputs.scenarios}
    methods: dict[str, Callable[[TaskArrays], np.ndarray]] = {}
    info: dict[str, Any] = {}
    for name in learners:
        start = time.time()
        torch.manual_seed(cfg.seed)
        model = build_model(inputs.features, cfg.model)
        learner = build_learner(model, cfg.meta, name)
        result = meta_train(model, learner, train, valid, cfg.train, cfg.seed)
        model.eval()
        methods[name] = (lambda m, lr: lambda t: predict(m, lr, t, cfg.train))(model, learner)
        info[name] = {"best_step": result.best_step, "steps": result.steps,
                      "valid_mae": round(result.best_valid_mae, 4),
                      "seconds": round(time.time() - start, 1)}
        log.info("%s: %s", name, info[name])
    if baselines:
        start = time.time()
        found, result = train_baselines(inputs.features, train, valid, cfg.model, cfg.meta,
                                        cfg.train, cfg.seed)
        methods.update({n: b.predict for n, b in found.items()})
        info["global"] = {"best_step": result.best_step, "steps": result.steps,
                          "valid_mae": round(result.best_valid_mae, 4),
                          "seconds": round(time.time() - start, 1)}
        log.info("global: %s", info["global"])
    table: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, tasks in scenarios.items():
        table[scenario] = {}
        for method, fn in methods.items():
            res = evaluate_predictions(fn(tasks), tasks.query_ratings, tasks.query_mask,
                                       names=METRICS)
            table[scenario][method] = {k: round(v, 4) for k, v in res.metrics.items()}
            table[scenario][method]["tasks"] = res.n_tasks
    table["_training"] = info  # type: ignore[assignment]
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--protocol", choices=["user-split", "melu", "configured"],
                    default="configured")
    ap.add_argument("--split", choices=["valid", "test"], default="test",
                    help="valid: the early-stopping set (for tuning); test: the scenarios")
    ap.add_argument("--learners", default=None,
                    help="comma-separated meta-learners (default: meta.learner)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a params.yaml value (YAML syntax), repeatable")
    ap.add_argument("--work-dir", default="artifacts/bench",
                    help="where features/tasks of a non-configured protocol are built")
    ap.add_argument("--out", default=None, help="also write the JSON table here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    raw = yaml.safe_load(Path(args.params).read_text())
    if args.protocol != "configured":
        raw.setdefault("tasks", {})["protocol"] = args.protocol
    raw.setdefault("train", {})["progress"] = False
    _override(raw, args.set)
    cfg = config_from_dict(raw, args.params)
    cfg, inputs = _inputs(cfg, Path(args.work_dir))
    learners = args.learners.split(",") if args.learners else [cfg.meta.learner]
    table = run(cfg, inputs, learners, args.split, baselines=not args.no_baselines)
    text = json.dumps(table, indent=2)
    print(text)
    if args.out:
        from metarec.io import atomic_file

        with atomic_file(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
