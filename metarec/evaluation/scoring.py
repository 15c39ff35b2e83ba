"""Scoring methods on scenarios: bootstrap intervals over tasks, adaptation curves, the report.

A method is a function ``predict(tasks) -> (N, Q) scores`` for the query slots of N tasks
(:class:`~metarec.data.arrays.TaskArrays`); it is scored with the metrics of
:mod:`metarec.evaluation.metrics`. Bootstrap intervals resample whole tasks with replacement;
adaptation curves cut each task's support set down to a seeded random subset of 0, 1, 3, ...
ratings and keep the query set. One seed draws every method's resamples and subsets, so methods
are compared on identical tasks.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import numpy as np

from metarec.config import EvaluationConfig
from metarec.data.arrays import TaskArrays
from metarec.evaluation.metrics import TaskScores, metric_names, task_scores
from metarec.evaluation.report import MethodResult, Report, build_report

log = logging.getLogger(__name__)

ALL_SHOTS = "all"


def bootstrap_intervals(scores: TaskScores, names: list[str], samples: int, level: float,
                        seed: int) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over tasks (tasks resampled with replacement)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {level}")
    n = len(scores.count)
    if samples <= 0 or n == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(samples) for name in names}
    for b in range(samples):
        vals = scores.aggregate(names, rng.integers(0, n, n))
        for name in names:
            draws[name][b] = vals[name]
    alpha = (1.0 - level) / 2.0
    return {name: (float(np.nanquantile(d, alpha)), float(np.nanquantile(d, 1.0 - alpha)))
            for name, d in draws.items() if np.isfinite(d).any()}


def evaluate_predictions(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, *,
                         names: list[str], bootstrap_samples: int = 0, ci_level: float = 0.95,
                         seed: int = 0) -> MethodResult:
    """Metrics ``names`` of (N, Q) predictions against true ratings, with bootstrap intervals."""
    scores = task_scores(pred, true, mask, names)
    return MethodResult(metrics=scores.aggregate(names),
                        intervals=bootstrap_intervals(scores, names, bootstrap_samples,
                                                      ci_level, seed),
                        n_tasks=int(len(scores.count)), n_ratings=int(scores.count.sum()))


def evaluate_method(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                    cfg: EvaluationConfig, seed: int) -> MethodResult:
    """Evaluate ``predict(tasks) -> (N, Q) scores`` on ``tasks`` with the configured metrics."""
    return evaluate_predictions(predict(tasks), tasks.query_ratings, tasks.query_mask,
                                names=metric_names(cfg.metrics, cfg.ks),
                                bootstrap_samples=cfg.bootstrap_samples, ci_level=cfg.ci_level,
                                seed=seed)


def limit_support(tasks: TaskArrays, shots: int, seed: int) -> TaskArrays:
    """``tasks`` keeping at most ``shots`` real support ratings each (a seeded random choice)."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    rng = np.random.default_rng(seed)
    mask = tasks.support_mask.astype(bool)
    keys = np.where(mask, rng.random(mask.shape), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    kept = mask & (rank < shots)
    out = TaskArrays(**tasks.__dict__)
    out.support_mask = kept.astype(tasks.support_mask.dtype)
    return out


def adaptation_curve(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                     shots: tuple[int, ...], names: list[str],
                     seed: int) -> dict[str, dict[str, float]]:
    """Metrics after adapting to 0, 1, 3, ... support ratings and to all of them.

    Returns ``{"0": {...}, "1": {...}, ..., "all": {...}}``: the same tasks and query sets with
    the support set cut down to a seeded random subset of each size.
    """
    curve: dict[str, dict[str, float]] = {}
    for k in shots:
        sub = limit_support(tasks, k, seed)
        curve[str(k)] = evaluate_predictions(predict(sub), sub.query_ratings, sub.query_mask,
                                             names=names).metrics
    curve[ALL_SHOTS] = evaluate_predictions(predict(tasks), tasks.query_ratings,
                                            tasks.query_mask, names=names).metrics
    return curve


def evaluate_all(predictors: Mapping[str, Callable[[TaskArrays], np.ndarray]],
                 scenarios: Mapping[str, TaskArrays], candidate: str, cfg: EvaluationConfig,
                 seed: int) -> "Report":
    """Every method on every scenario, with bootstrap intervals and adaptation curves.

    ``predictors``: ``{method: predict(tasks) -> (N, Q) scores}``, the candidate among them;
    ``scenarios``: ``{scenario: test tasks}``. The same seed draws every method's resamples
    and support subsets, so methods are compared on identical tasks.
    """
    names = metric_names(cfg.metrics, cfg.ks)
    results: dict[str, dict[str, MethodResult]] = {}
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for scenario, tasks in scenarios.items():
        if len(tasks) == 0:
            raise ValueError(f"scenario {scenario!r} has no tasks to evaluate")
        results[scenario], curves[scenario] = {}, {}
        for method, predict in predictors.items():
            log.info("evaluating %s on %s (%d tasks)", method, scenario, len(tasks))
            results[scenario][method] = evaluate_method(predict, tasks, cfg, seed)
            if cfg.curve_shots:
                curves[scenario][method] = adaptation_curve(predict, tasks, cfg.curve_shots,
                                                            names, seed)
    return build_report(results, candidate, curves, cfg.ci_level)
