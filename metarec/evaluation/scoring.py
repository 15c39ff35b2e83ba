"""Scoring methods on scenarios: bootstrap intervals over tasks, adaptation curves, the report.

A method is a function ``predict(tasks) -> (N, Q) scores`` for the query slots of N tasks
(:class:`~metarec.data.arrays.TaskArrays`); it is scored with the metrics of
:mod:`metarec.evaluation.metrics`. Bootstrap intervals resample whole tasks with replacement;
adaptation curves cut each task's support set down to a seeded random subset of 0, 1, 3, ...
ratings and keep the query set. One seed draws every method's resamples and subsets, so methods
are compared on identical tasks: the curve differences (candidate minus baseline at each support
size) are paired, each resample scoring both methods on the same task indices.

Full-catalog metrics (:mod:`metarec.evaluation.catalog`, names ``full_*``) rank every catalog
item through the same ``predict``; with ``evaluation.full_catalog.enabled`` and the catalog
size given (``evaluate_all(..., n_items=...)``) they are scored for every method at full
support and at every support size of the curve, and join its paired differences.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Collection, Mapping

import numpy as np

from metarec.config import EvaluationConfig
from metarec.data.arrays import TaskArrays, limit_support  # noqa: F401 (re-exported)
from metarec.evaluation.catalog import Catalog, full_metric_names, is_full_catalog
from metarec.evaluation.metrics import LOWER_IS_BETTER, TaskScores, metric_names, task_scores
from metarec.evaluation.report import (ALL_SHOTS, Differences, MethodResult, PairedDifference,
                                       Report, build_report)

log = logging.getLogger(__name__)


def resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) task indices drawn with replacement; one draw serves every method."""
    if n == 0:
        return np.zeros((0, 0), np.int64)
    return np.random.default_rng(seed).integers(0, n, (samples, n))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {level}")


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float] | None:
    """Two-sided percentile interval of (B,) draws; None when no draw is finite."""
    _check_level(level)
    if not np.isfinite(draws).any():
        return None
    alpha = (1.0 - level) / 2.0
    return float(np.nanquantile(draws, alpha)), float(np.nanquantile(draws, 1.0 - alpha))


def bootstrap_intervals(scores: TaskScores, names: list[str], samples: int, level: float,
                        seed: int) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over tasks (tasks resampled with replacement)."""
    idx = resample_indices(len(scores.count), max(samples, 0), seed)
    _check_level(level)
    if len(idx) == 0:
        return {}
    draws = scores.resampled(names, idx)
    return {name: iv for name in names if (iv := _percentiles(draws[name], level)) is not None}


def paired_differences(candidate: TaskScores, baseline: TaskScores, names: list[str],
                       idx: np.ndarray, level: float) -> dict[str, PairedDifference]:
    """Candidate minus baseline per metric, both scored on the same (B, n) resampled tasks.

    The interval is the percentile interval of the B differences (None when B is 0): identical
    methods give 0 with a zero-width interval, whatever the resamples.
    """
    full_c, full_b = candidate.aggregate(names), baseline.aggregate(names)
    draws_c = candidate.resampled(names, idx) if len(idx) else {}
    draws_b = baseline.resampled(names, idx) if len(idx) else {}
    return {name: PairedDifference(
        full_c[name] - full_b[name],
        _percentiles(draws_c[name] - draws_b[name], level) if len(idx) else None)
        for name in names}


def _scored_result(scores: TaskScores, names: list[str], bootstrap_samples: int,
                   ci_level: float, seed: int) -> MethodResult:
    return MethodResult(metrics=scores.aggregate(names),
                        intervals=bootstrap_intervals(scores, names, bootstrap_samples,
                                                      ci_level, seed),
                        n_tasks=int(len(scores.count)), n_ratings=int(scores.count.sum()))


def evaluate_predictions(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, *,
                         names: list[str], bootstrap_samples: int = 0, ci_level: float = 0.95,
                         seed: int = 0) -> MethodResult:
    """Metrics ``names`` of (N, Q) predictions against true ratings, with bootstrap intervals."""
    return _scored_result(task_scores(pred, true, mask, names), names, bootstrap_samples,
                          ci_level, seed)


def method_scores(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                  names: list[str], catalog: Catalog | None = None) -> TaskScores:
    """Per-task statistics of ``names`` for one method: the query-set metrics from one
    ``predict(tasks)``, the full-catalog ones (``full_*``) ranked over ``catalog``."""
    query = [n for n in names if not is_full_catalog(n)]
    full = [n for n in names if is_full_catalog(n)]
    scores = task_scores(predict(tasks), tasks.query_ratings, tasks.query_mask, query)
    if not full:
        return scores
    if catalog is None:
        raise ValueError(f"full-catalog metrics {full} need the catalog (evaluate_all's "
                         "n_items) and evaluation.full_catalog.enabled")
    ranked = catalog.scores(predict, tasks, full)
    return dataclasses.replace(scores, ranking={**scores.ranking, **ranked.ranking})


def curve_scores(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                 shots: tuple[int, ...], names: list[str], seed: int,
                 full: TaskScores | None = None,
                 catalog: Catalog | None = None) -> dict[str, TaskScores]:
    """Per-task scores after adapting to 0, 1, 3, ... support ratings and to all of them.

    Returns ``{"0": scores, ..., "all": scores}``: the same tasks and query sets with the
    support set cut down to a seeded random subset of each size; ``full``: the scores of the
    whole support when already computed; ``catalog``: for full-catalog names among ``names``.
    """
    out: dict[str, TaskScores] = {}
    for k in shots:
        out[str(k)] = method_scores(predict, limit_support(tasks, k, seed), names, catalog)
    out[ALL_SHOTS] = full if full is not None else method_scores(predict, tasks, names, catalog)
    return out


def adaptation_curve(predict: Callable[[TaskArrays], np.ndarray], tasks: TaskArrays,
                     shots: tuple[int, ...], names: list[str],
                     seed: int) -> dict[str, dict[str, float]]:
    """Metrics at each support size of :func:`curve_scores`: ``{"0": {...}, ..., "all": {...}}``."""
    return {k: sc.aggregate(names)
            for k, sc in curve_scores(predict, tasks, shots, names, seed).items()}


def full_catalog_names(cfg: EvaluationConfig, n_items: int | None) -> list[str]:
    """The full-catalog metric names evaluated: none unless enabled and the catalog is known;
    a full-catalog name in ``evaluation.curve_metrics`` that will not be scored is an error."""
    fc = cfg.full_catalog
    names = full_metric_names(fc.metrics, fc.ks) if fc.enabled and n_items is not None else []
    missing = [n for n in cfg.curve_metrics if is_full_catalog(n) and n not in names]
    if missing:
        why = ("evaluation.full_catalog.enabled is false" if not fc.enabled else
               "no catalog was given (n_items)" if n_items is None else
               f"evaluation.full_catalog gives {names}")
        raise ValueError(f"evaluation.curve_metrics names full-catalog metrics {missing} that "
                         f"are not evaluated: {why}")
    return names


def _own(names: list[str], method: str, score_only: Collection[str]) -> list[str]:
    """``names`` without the rating errors for a method whose scores are not ratings."""
    return [n for n in names if n not in LOWER_IS_BETTER] if method in score_only else names


def evaluate_all(predictors: Mapping[str, Callable[[TaskArrays], np.ndarray]],
                 scenarios: Mapping[str, TaskArrays], candidate: str, cfg: EvaluationConfig,
                 seed: int, *, n_items: int | None = None,
                 score_only: Collection[str] = ()) -> Report:
    """Every method on every scenario: bootstrap intervals, curves and paired differences.

    ``predictors``: ``{method: predict(tasks) -> (N, Q) scores}``, the candidate among them;
    ``scenarios``: ``{scenario: test tasks}``. One seed draws the support subsets and one set of
    resampled task indices per scenario, shared by every method and support size, so methods
    are compared on identical tasks; every method other than the candidate is a baseline of the
    curve differences (candidate minus baseline, ``cfg.curve_metrics``). ``n_items``: the
    catalog (item rows 0..n_items-1) of the full-catalog metrics, which then join the results,
    the curves and the differences (``cfg.full_catalog``; none without it). ``score_only``:
    methods whose scores rank but are not ratings (most_pop, item_knn): they get no rating
    error (mae, rmse) anywhere in the report.
    """
    full_names = full_catalog_names(cfg, n_items)
    catalog = None if not full_names else Catalog(
        int(n_items), cfg.full_catalog.relevance_threshold, cfg.full_catalog.chunk, seed)
    names = list(dict.fromkeys(metric_names(cfg.metrics, cfg.ks) + full_names))
    curve_names = list(dict.fromkeys(list(cfg.curve_metrics) + full_names))
    scored = list(dict.fromkeys(names + curve_names))
    if candidate not in predictors:
        raise ValueError(f"no predictor for the candidate {candidate!r}")
    results: dict[str, dict[str, MethodResult]] = {}
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    diffs: Differences = {}
    for scenario, tasks in scenarios.items():
        if len(tasks) == 0:
            raise ValueError(f"scenario {scenario!r} has no tasks to evaluate")
        idx = resample_indices(len(tasks), max(cfg.bootstrap_samples, 0), seed)
        per_k: dict[str, dict[str, TaskScores]] = {}
        results[scenario] = {}
        for method, predict in predictors.items():
            log.info("evaluating %s on %s (%d tasks)", method, scenario, len(tasks))
            own = _own(scored, method, score_only)
            full = method_scores(predict, tasks, own, catalog)
            results[scenario][method] = _scored_result(full, _own(names, method, score_only),
                                                       cfg.bootstrap_samples, cfg.ci_level, seed)
            per_k[method] = curve_scores(predict, tasks, cfg.curve_shots, own, seed, full,
                                         catalog)
        curves[scenario] = {m: {k: sc.aggregate(_own(curve_names, m, score_only))
                                for k, sc in by_k.items()}
                            for m, by_k in per_k.items()}
        diffs[scenario] = {b: {k: paired_differences(per_k[candidate][k], sc,
                                                     _own(curve_names, b, score_only), idx,
                                                     cfg.ci_level)
                               for k, sc in by_k.items()}
                           for b, by_k in per_k.items() if b != candidate}
    return build_report(results, candidate, curves, cfg.ci_level, differences=diffs,
                        curve_metrics=tuple(curve_names),
                        bootstrap_samples=max(cfg.bootstrap_samples, 0))
