"""Speed (and values) of the full-catalog evaluation on MovieLens-100K's test users.

For every test task of the configured protocol (user-split: ``test``, 58 users with the
default seed), each method adapts to the task's support set and ranks every one of the catalog's
1,682 items (metarec.evaluation.catalog: chunked over tasks x items, at most
``evaluation.full_catalog.chunk`` scores per predict call). Timed: the whole full-catalog
evaluation of one method (adaptation, scoring, ranking, every metric), median of ``--repeats``
runs after one warm-up, on this machine's CPU (threads: torch's default unless
``OMP_NUM_THREADS`` says otherwise). Also printed: each method's full-catalog Recall@10,
nDCG@10 and MRR (explicit data: the query's ratings >= relevance_threshold are relevant;
implicit tasks: their positives).

The model: the trained ``meta_model.pt`` under ``--artifacts`` (with its features and tasks:
the shipped pipeline's outputs after ``metarec pipeline run``) when present, else the
configured learner (ridge by default) trained for ``--max-steps`` steps on the configured
features and tasks (built under ``--work-dir`` like benchmarks/ml100k_quality.py when absent).
Baselines: most_pop and item_knn, fitted on the training tasks (no network to train).

``--whole`` (pipeline artifacts only) also times the evaluation stage's ``evaluate_all`` over
every method of a pipeline run (the learner and every baseline, curves at every support size,
bootstrap intervals) with ``evaluation.full_catalog.enabled`` false and true: what the
full-catalog metrics add to a run.

    .venv/bin/python benchmarks/catalog_eval.py --artifacts artifacts
    .venv/bin/python benchmarks/catalog_eval.py --max-steps 200 --out results/catalog_eval.json
    .venv/bin/python benchmarks/catalog_eval.py --artifacts artifacts --whole
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ml100k_quality import _inputs, _override  # noqa: E402

from metarec.config import Config, config_from_dict  # noqa: E402
from metarec.data.arrays import TaskArrays  # noqa: E402
from metarec.evaluation.catalog import Catalog, full_metric_names  # noqa: E402

log = logging.getLogger("catalog_eval")
SHOWN = ("full_recall_at_10", "full_ndcg_at_10", "full_mrr")


def _at(cfg: Config, root: Path) -> Config:
    """``cfg`` reading features, tasks and the trained model under ``root``."""
    return dataclasses.replace(
        cfg, features=dataclasses.replace(cfg.features, out_dir=str(root / "features")),
        tasks=dataclasses.replace(cfg.tasks, out_dir=str(root / "tasks")),
        train=dataclasses.replace(cfg.train, out_dir=str(root / "train")))


def learner_predict(cfg: Config, artifacts: Path, work_dir: Path, max_steps: int
                    ) -> tuple[Callable[[TaskArrays], np.ndarray], Any, dict[str, Any]]:
    """The meta-learner's predict, the inputs and where the model came from."""
    from metarec.pipeline.inputs import load_inputs
    from metarec.pipeline.train import load_meta_model
    from metarec.training.loop import predict

    if (artifacts / "train" / "meta_model.pt").exists():
        cfg = _at(cfg, artifacts)
        inputs = load_inputs(cfg.features, cfg.tasks)
        model, learner = load_meta_model(cfg, inputs.features)
        summary = json.loads((artifacts / "train" / "summary.json").read_text())
        source = {"model": f"{artifacts}/train/meta_model.pt (pipeline artifacts)",
                  "steps": summary.get("steps"), "best_step": summary.get("best_step")}
    else:
        from metarec.meta.learners import build_learner
        from metarec.models.estimator import build_model
        from metarec.training.loop import meta_train

        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=max_steps))
        cfg, inputs = _inputs(cfg, work_dir)
        torch.manual_seed(cfg.seed)
        model = build_model(inputs.features, cfg.model)
        learner = build_learner(model, cfg.meta)
        start = time.perf_counter()
        result = meta_train(model, learner, inputs.train, inputs.valid, cfg.train, cfg.seed)
        model.eval()
        source = {"model": f"{cfg.meta.learner} trained here for {result.steps} steps "
                           f"(best step {result.best_step})",
                  "train_seconds": round(time.perf_counter() - start, 1)}
    return (lambda t: predict(model, learner, t, cfg.train)), inputs, {
        "learner": cfg.meta.learner, **source}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    """``fn()`` once to warm up, then ``repeats`` timed runs: (last result, seconds each)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def whole_evaluation(cfg: Config, artifacts: Path, predict) -> dict[str, float]:
    """Seconds of evaluate_all over the learner and every baseline of a pipeline run, without
    and with the full-catalog metrics."""
    from metarec.evaluation.scoring import evaluate_all
    from metarec.pipeline.inputs import load_inputs
    from metarec.pipeline.train import load_baselines

    cfg = _at(cfg, artifacts)
    inputs = load_inputs(cfg.features, cfg.tasks)
    methods = {cfg.meta.learner: predict,
               **{n: b.predict for n, b in load_baselines(cfg, inputs).items()}}
    scenarios = {s: inputs.sets[s] for s in inputs.scenarios}
    out = {}
    for enabled in (False, True):
        ev = dataclasses.replace(cfg.evaluation, full_catalog=dataclasses.replace(
            cfg.evaluation.full_catalog, enabled=enabled))
        start = time.perf_counter()
        evaluate_all(methods, scenarios, cfg.meta.learner, ev, cfg.seed,
                     n_items=len(inputs.features.item_ids))
        out[f"full_catalog_{'on' if enabled else 'off'}_seconds"] = round(
            time.perf_counter() - start, 2)
    out["methods"] = len(methods)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", default="artifacts",
                    help="features/, tasks/ and train/meta_model.pt of a pipeline run")
    ap.add_argument("--max-steps", type=int, default=200,
                    help="training steps when no trained model is found")
    ap.add_argument("--work-dir", default="artifacts/bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--whole", action="store_true",
                    help="also time evaluate_all over every method, full catalog off and on")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    raw = yaml.safe_load(Path(args.params).read_text())
    raw.setdefault("train", {})["progress"] = False
    _override(raw, args.set)
    cfg = config_from_dict(raw, args.params)
    predict, inputs, source = learner_predict(cfg, Path(args.artifacts), Path(args.work_dir),
                                              args.max_steps)
    from metarec.training.ranking_baselines import ItemKNNBaseline, MostPopBaseline

    n_items = len(inputs.features.item_ids)
    methods = {cfg.meta.learner: predict,
               "most_pop": MostPopBaseline.fit(inputs.train, n_items).predict,
               "item_knn": ItemKNNBaseline.fit(inputs.train, n_items).predict}
    fc = cfg.evaluation.full_catalog
    names = full_metric_names(fc.metrics, fc.ks)
    catalog = Catalog(n_items, fc.relevance_threshold, fc.chunk, cfg.seed)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "source": source, "items": n_items, "chunk": fc.chunk, "scenarios": {}}
    for scenario in inputs.scenarios:
        tasks = inputs.sets[scenario]
        by_method: dict[str, Any] = {}
        for method, fn in methods.items():
            scores, times = timed(lambda: catalog.scores(fn, tasks, names), args.repeats)
            values = {n: float(np.nanmean(v)) for n, v in scores.ranking.items()}
            by_method[method] = {"seconds_median": round(float(np.median(times)), 4),
                                 "seconds": [round(t, 4) for t in times],
                                 **{n: round(values[n], 4) for n in SHOWN if n in values}}
            log.info("%s/%s: %s", scenario, method, by_method[method])
        result["scenarios"][scenario] = {"tasks": len(tasks), "pairs": len(tasks) * n_items,
                                         "methods": by_method}
    if args.whole:
        result["whole_evaluation"] = whole_evaluation(cfg, Path(args.artifacts), predict)
        log.info("whole evaluation: %s", result["whole_evaluation"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from metarec.io import atomic_file

        with atomic_file(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
