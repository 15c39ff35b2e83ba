"""The objective of a trial: the cross-validated metric of ``tune.objective``.

A trial's settings are laid over the study's base configuration; the learner is meta-trained
on every fold in turn (with the trial budget, ``tune.max_steps``) and scored on the held-out
users along the adaptation curve. After each fold the running mean is reported, so the pruner
can stop a trial that is already worse than the others were at that fold. A finished trial
stores its value, standard error and per-task scores (for paired differences with any other
trial) and its constraint: the constraint metric of the learner against the best baseline.
Baselines are fitted once per fold with the base configuration (a fixed bar, not re-trained
per trial) and cached under ``tune.out_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metarec.config import Config
from metarec.data.arrays import FeatureArrays
from metarec.evaluation.metrics import lower_is_better
from metarec.io import atomic_file
from metarec.tuning.cv import (Fold, fold_scores, mean_se, train_fold_baselines,
                               train_learner)
from metarec.tuning.space import suggest, with_params

log = logging.getLogger(__name__)

REFERENCE = "reference"  # user attr of the trial that measures the current settings
PER_TASK = "per_task"    # user attr: the objective per held-out task, folds in order


def budgeted(cfg: Config) -> Config:
    """``cfg`` with the trial budget: ``tune.max_steps`` training steps (when set), no
    progress bars."""
    steps = cfg.tune.max_steps or cfg.train.max_steps
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps,
                                                              progress=False))


def objective_shots(cfg: Config) -> tuple[int | str, ...]:
    """The support sizes a trial is scored at (``tune.objective.shots``, else the curve)."""
    return tuple(cfg.tune.objective.shots) or (*cfg.evaluation.curve_shots, "all")


def metric_names(cfg: Config) -> list[str]:
    obj = cfg.tune.objective
    return list(dict.fromkeys([obj.metric, *([obj.constraint_metric]
                                             if obj.constraint_metric else [])]))


@dataclass
class FoldBaselines:
    """Per fold, the baselines' per-task scores ``{name: {metric: (shots, tasks)}}``."""

    scores: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)
    seconds: float = 0.0

    def best_mean(self, metric: str, names: tuple[str, ...]) -> tuple[str, float]:
        """The baseline with the best mean of ``metric`` over every fold and support size."""
        means = {n: float(np.concatenate([f[n][metric].ravel() for f in self.scores]).mean())
                 for n in names}
        pick = min if lower_is_better(metric) else max
        best = pick(means, key=means.get)
        return best, means[best]


def fold_baselines(base: Config, features: FeatureArrays, folds: list[Fold],
                   manifest: dict) -> FoldBaselines:
    """The baselines' scores on every fold, from the cache when this base configuration,
    task set and fold layout (held-out and early-stopping users) were scored before
    (``tune.out_dir/baselines/<hash>.npz``)."""
    cfg = budgeted(base)
    names = metric_names(cfg)
    key = {"tasks": manifest, "model": dataclasses.asdict(cfg.model),
           "meta": dataclasses.asdict(cfg.meta), "train": dataclasses.asdict(cfg.train),
           "seed": cfg.seed, "folds": len(folds), "shots": folds[0].shots, "metrics": names,
           "layout": [[f.held.user_ids.tolist(), f.stop.user_ids.tolist()] for f in folds]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(cfg.tune.out_dir) / "baselines" / f"{digest[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            scores = [{} for _ in folds]
            for k in z.files:  # "<fold>/<baseline>/<metric>"
                fold, name, metric = k.split("/")
                scores[int(fold)].setdefault(name, {})[metric] = z[k]
        return FoldBaselines(scores, 0.0)
    start, scores = time.perf_counter(), []
    for fold in folds:
        predictors, info = train_fold_baselines(cfg, features, fold.train, fold.stop)
        log.info("fold %d baselines: global network %s", fold.index, info)
        scores.append({n: fold_scores(p, fold, names) for n, p in predictors.items()})
    with atomic_file(path, "wb", encoding=None) as fh:
        np.savez(fh, **{f"{k}/{n}/{m}": v for k, by in enumerate(scores)
                        for n, ms in by.items() for m, v in ms.items()})
    return FoldBaselines(scores, time.perf_counter() - start)


@dataclass
class Objective:
    """Callable on an ``optuna.Trial``: trains and scores the trial's settings on every fold.

    ``on_fold(trial, fold_index, metrics)`` and ``on_end(trial, summary)`` let the caller log
    each fold and each trial (MLflow, :mod:`metarec.tuning.tracking`).
    """

    base: Config
    features: FeatureArrays
    folds: list[Fold]
    baselines: FoldBaselines
    on_fold: Callable[[Any, int, dict[str, float]], None] = lambda *a: None
    on_end: Callable[[Any, dict[str, Any]], None] = lambda *a: None

    def __call__(self, trial) -> float:
        import optuna

        start = time.perf_counter()
        params = suggest(trial, self.base.tune.space)
        cfg = budgeted(with_params(self.base, params, f"trial {trial.number}"))
        obj = cfg.tune.objective
        names = metric_names(cfg)
        per_task: dict[str, list[np.ndarray]] = {m: [] for m in names}
        reference = bool(trial.user_attrs.get(REFERENCE))
        summary: dict[str, Any] = {"params": params, "reference": reference}
        try:
            for fold in self.folds:
                t0 = time.perf_counter()
                predict, info = train_learner(cfg, self.features, fold.train, fold.stop)
                scores = fold_scores(predict, fold, names)
                for m in names:
                    per_task[m].append(scores[m].mean(0))  # mean over support sizes, per task
                running = float(np.concatenate(per_task[obj.metric]).mean())
                self.on_fold(trial, fold.index, {
                    f"fold_{m}": float(per_task[m][-1].mean()) for m in names} | {
                    f"cv_{obj.metric}_running": running, "fold_seconds":
                        time.perf_counter() - t0, "fold_best_step": info["best_step"]})
                trial.report(running, fold.index)
                # The current settings are always measured whole: they are what the best
                # trial is compared with.
                if not reference and trial.should_prune():
                    summary.update(state="PRUNED", folds_done=fold.index + 1)
                    raise optuna.TrialPruned(f"pruned after fold {fold.index}")
            values = {m: np.concatenate(v) for m, v in per_task.items()}
            value, se = mean_se(values[obj.metric])
            trial.set_user_attr("se", se)
            trial.set_user_attr(PER_TASK, [round(float(x), 6) for x in values[obj.metric]])
            summary.update(state="COMPLETE", value=value, se=se, tasks=len(values[obj.metric]),
                           folds_done=len(self.folds), **{f"cv_{obj.metric}": value,
                                                          f"cv_{obj.metric}_se": se})
            if obj.constraint_metric:
                summary.update(self._constraint(trial, values[obj.constraint_metric], obj))
            return value
        except (FloatingPointError, ValueError) as exc:
            # Diverged, or settings the model refuses (head_factors without item_factors):
            # this trial fails, the study goes on.
            summary.update(state="FAIL", error=str(exc))
            raise
        finally:
            summary["seconds"] = time.perf_counter() - start
            trial.set_user_attr("seconds", round(summary["seconds"], 1))
            self.on_end(trial, summary)

    def _constraint(self, trial, values: np.ndarray, obj) -> dict[str, Any]:
        """Feasible (<= 0) when the learner's mean ``constraint_metric`` is no worse than the
        best baseline's by more than the margin."""
        name, best = self.baselines.best_mean(obj.constraint_metric, obj.constraint_baselines)
        mean = float(values.mean())
        gap = (mean - best) if lower_is_better(obj.constraint_metric) else (best - mean)
        violation = gap - obj.constraint_margin
        trial.set_constraint(obj.constraint_metric, violation)
        trial.set_user_attr("constraint", {"metric": obj.constraint_metric, "value": mean,
                                           "baseline": name, "baseline_value": best})
        return {f"cv_{obj.constraint_metric}": mean, "constraint_violation": violation,
                "constraint_baseline": name}
