"""Evaluation: rating and ranking metrics over few-shot query sets, bootstrap intervals, reports.

All metrics are pure numpy functions of three (N, Q) arrays: predicted scores, true ratings and
the query mask (1 where a query slot holds a real rating). N is the number of tasks (users),
Q the padded query size. Definitions:

- ``mae``, ``rmse``: pooled over every real query rating (rating units);
- ``ndcg_at_k`` (MeLU, KDD 2019): within each task's query set, gain ``2^rating - 1`` and
  discount ``log2(1 + rank)`` (rank 1 first), normalised by the ideal ordering; averaged over tasks;
- ``precision_at_k`` and ``recbole_ndcg_at_k`` (RecBole-MetaRec benchmark): the relevant items
  are the k query items with the highest true rating (ties broken by query slot, first wins);
  precision is the share of the predicted top k that is relevant, nDCG uses binary gains.

With fewer than k real query items, the cut-off is the number of real items. Tied predictions
are scored tie-aware (McSherry & Najork, 2008): the expected value over every order of a tie,
so a constant predictor gets the score of a random ranking rather than of the slot order.
A task whose ideal DCG is 0 (every gain 0) has no nDCG and is left out of the mean.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from metarec.config import EvaluationConfig
from metarec.data.arrays import TaskArrays
from metarec.io import atomic_dir

log = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"mae", "rmse"})
RANKING_FAMILIES = ("ndcg", "precision", "recbole_ndcg")
_RANKED = re.compile(r"^(ndcg|precision|recbole_ndcg)_at_(\d+)$")
ALL_SHOTS = "all"


def lower_is_better(metric: str) -> bool:
    """True for error metrics (mae, rmse), False for ranking metrics."""
    return metric in LOWER_IS_BETTER


def metric_names(families: tuple[str, ...], ks: tuple[int, ...]) -> list[str]:
    """Expand metric families over the cut-offs: ("mae", "ndcg"), (1, 3) -> mae, ndcg_at_1, ..."""
    names: list[str] = []
    for fam in families:
        if fam in LOWER_IS_BETTER:
            names.append(fam)
        elif fam in RANKING_FAMILIES:
            if not ks or any(k < 1 for k in ks):
                raise ValueError(f"evaluation.ks must be positive integers, got {ks}")
            names.extend(f"{fam}_at_{k}" for k in ks)
        else:
            raise ValueError(f"unknown metric family {fam!r}; known: "
                             f"{sorted(LOWER_IS_BETTER) + list(RANKING_FAMILIES)}")
    return names


# --------------------------------------------------------------------------- per-task metrics


def _check(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    mask = np.asarray(mask).astype(bool)
    if pred.ndim != 2 or pred.shape != true.shape or pred.shape != mask.shape:
        raise ValueError(f"predictions {pred.shape}, ratings {true.shape} and mask {mask.shape} "
                         "must be equal (N, Q) arrays")
    if not np.isfinite(pred[mask]).all():
        raise ValueError(f"{int((~np.isfinite(pred[mask])).sum())} predictions of real query "
                         "ratings are NaN or infinite")
    if not np.isfinite(true[mask]).all():
        raise ValueError("true ratings of real query slots contain NaN or infinite values")
    return pred, true, mask


def _expected_weight(pred: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, Q): expected position weight of each real item, ties spread evenly over their slots.

    ``weights`` (N, Q) is each task's weight of rank positions 1..Q (0 beyond its cut-off). An
    item tied with others occupies positions [above, above + tied) with equal probability.
    """
    p = np.where(mask, pred, -np.inf)
    greater = (p[:, None, :] > p[:, :, None]) & mask[:, None, :]  # [n, i, j]: j ranks above i
    equal = (p[:, None, :] == p[:, :, None]) & mask[:, None, :]
    above = greater.sum(2)
    tied = equal.sum(2)
    cum = np.concatenate([np.zeros((len(p), 1)), np.cumsum(weights, axis=1)], axis=1)
    total = np.take_along_axis(cum, above + tied, 1) - np.take_along_axis(cum, above, 1)
    return np.where(mask, total / np.maximum(tied, 1), 0.0)


def _discounts(q: int, k: np.ndarray) -> np.ndarray:
    """(N, Q) position discounts 1/log2(1 + rank), zero at ranks beyond each task's cut-off."""
    ranks = np.arange(1, q + 1)
    return np.where(ranks[None, :] <= k[:, None], 1.0 / np.log2(1.0 + ranks), 0.0)


def ndcg_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) MeLU nDCG@k per task (gain 2^r - 1); NaN where the ideal DCG is 0."""
    pred, true, mask = _check(pred, true, mask)
    cut = np.minimum(k, mask.sum(1))
    disc = _discounts(pred.shape[1], cut)
    gains = np.where(mask, np.power(2.0, true) - 1.0, 0.0)
    dcg = (_expected_weight(pred, mask, disc) * gains).sum(1)
    ideal = (-np.sort(-gains, axis=1) * disc).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


def top_true(true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N, Q) bool: the k best-rated real query items of each task (ties: earlier slot wins)."""
    _, true, mask = _check(np.zeros_like(true, dtype=np.float64), true, mask)
    order = np.argsort(np.where(mask, -true, np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(true.shape[1])[None, :].repeat(len(true), 0), 1)
    return (ranks < k) & mask


def precision_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) RecBole-MetaRec precision@k: relevant share of the predicted top min(k, n) items."""
    pred, true, mask = _check(pred, true, mask)
    rel = top_true(true, mask, k)
    cut = np.minimum(k, mask.sum(1))
    inside = (np.arange(pred.shape[1])[None, :] < cut[:, None]).astype(np.float64)
    hits = (_expected_weight(pred, mask, inside) * rel).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cut > 0, hits / np.maximum(cut, 1), np.nan)


def recbole_ndcg_at_k(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(N,) RecBole-MetaRec nDCG@k: binary gains on the k best-rated query items."""
    pred, true, mask = _check(pred, true, mask)
    rel = top_true(true, mask, k).astype(np.float64)
    return ndcg_at_k(pred, np.log2(1.0 + rel), mask, k)  # 2^log2(1+rel) - 1 == rel


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class TaskScores:
    """Per-task sufficient statistics: pooled errors and per-task ranking metrics, all (N,)."""

    abs_err: np.ndarray
    sq_err: np.ndarray
    count: np.ndarray
    ranking: dict[str, np.ndarray]

    def aggregate(self, names: list[str], idx: np.ndarray | None = None) -> dict[str, float]:
        """Metric values over the tasks at ``idx`` (all tasks when None)."""
        sel = slice(None) if idx is None else idx
        n = float(self.count[sel].sum())
        out: dict[str, float] = {}
        for name in names:
            if name == "mae":
                out[name] = float(self.abs_err[sel].sum() / n) if n else float("nan")
            elif name == "rmse":
                out[name] = float(np.sqrt(self.sq_err[sel].sum() / n)) if n else float("nan")
            else:
                vals = self.ranking[name][sel]
                out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        return out


def task_scores(pred: np.ndarray, true: np.ndarray, mask: np.ndarray,
                names: list[str]) -> TaskScores:
    """Per-task statistics of ``names`` for (N, Q) predictions, ratings and mask."""
    pred, true, mask = _check(pred, true, mask)
    err = np.where(mask, pred - true, 0.0)
    ranking: dict[str, np.ndarray] = {}
    funcs = {"ndcg": ndcg_at_k, "precision": precision_at_k, "recbole_ndcg": recbole_ndcg_at_k}
    for name in names:
        m = _RANKED.match(name)
        if m:
            ranking[name] = funcs[m.group(1)](pred, true, mask, int(m.group(2)))
        elif name not in LOWER_IS_BETTER:
            raise ValueError(f"unknown metric {name!r}")
    return TaskScores(np.abs(err).sum(1), (err ** 2).sum(1), mask.sum(1).astype(np.float64),
                      ranking)


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


@dataclass(frozen=True)
class MethodResult:
    """One method on one scenario: metric values, bootstrap intervals and sizes."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_tasks: int = 0
    n_ratings: int = 0


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


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    """Evaluation of one candidate beside its baselines, per scenario.

    ``metrics[scenario][method][metric]`` values; ``intervals`` likewise as (low, high);
    ``curves[scenario][method][shots][metric]``; ``counts[scenario][method]`` tasks/ratings.
    """

    candidate: str
    metrics: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    ci_level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (intervals as [low, high] lists)."""
        return {"candidate": self.candidate, "metrics": self.metrics, "ci_level": self.ci_level,
                "intervals": {s: {m: {k: list(v) for k, v in iv.items()}
                                  for m, iv in by.items()} for s, by in self.intervals.items()},
                "curves": self.curves, "counts": self.counts}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=True)

    def flat(self, method: str | None = None) -> dict[str, float]:
        """``{"scenario/metric": value}`` of one method (default: the candidate), for metadata."""
        method = method or self.candidate
        return {f"{s}/{m}": float(v) for s, by in self.metrics.items()
                for m, v in by.get(method, {}).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`; a missing key is a ValueError naming it."""
        for key in ("candidate", "metrics"):
            if key not in raw:
                raise ValueError(f"evaluation report: missing key {key!r}")
        intervals = {s: {m: {k: (float(v[0]), float(v[1])) for k, v in iv.items()}
                         for m, iv in by.items()} for s, by in raw.get("intervals", {}).items()}
        return cls(candidate=str(raw["candidate"]), metrics=raw["metrics"], intervals=intervals,
                   curves=raw.get("curves", {}), counts=raw.get("counts", {}),
                   ci_level=float(raw.get("ci_level", 0.95)))

    def to_markdown(self) -> str:
        """One table per scenario: methods as rows, metrics as columns, intervals in brackets."""
        lines = [f"# Evaluation: {self.candidate}", ""]
        for scenario, by_method in self.metrics.items():
            names = sorted({n for vals in by_method.values() for n in vals})
            counts = self.counts.get(scenario, {}).get(self.candidate, {})
            lines += [f"## {scenario}" + (f" ({counts.get('n_tasks')} tasks)" if counts else ""),
                      "", "| method | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for method, vals in by_method.items():
                cells = []
                for n in names:
                    v = vals.get(n, float("nan"))
                    iv = self.intervals.get(scenario, {}).get(method, {}).get(n)
                    cells.append(f"{v:.4f}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""))
                label = f"**{method}**" if method == self.candidate else method
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append(f"Intervals: {self.ci_level:.0%} percentile bootstrap over tasks. "
                     "mae/rmse: lower is better; ranking metrics: higher is better.")
        return "\n".join(lines) + "\n"


def build_report(results: Mapping[str, Mapping[str, MethodResult]], candidate: str,
                 curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
                 | None = None, ci_level: float = 0.95) -> Report:
    """Assemble a :class:`Report` from ``{scenario: {method: MethodResult}}`` and curves."""
    for scenario, by_method in results.items():
        if candidate not in by_method:
            raise ValueError(f"scenario {scenario!r} has no result for the candidate "
                             f"{candidate!r} (methods: {sorted(by_method)})")
    return Report(
        candidate=candidate,
        metrics={s: {m: dict(r.metrics) for m, r in by.items()} for s, by in results.items()},
        intervals={s: {m: dict(r.intervals) for m, r in by.items()} for s, by in results.items()},
        curves={s: {m: {k: dict(v) for k, v in c.items()} for m, c in by.items()}
                for s, by in (curves or {}).items()},
        counts={s: {m: {"n_tasks": r.n_tasks, "n_ratings": r.n_ratings} for m, r in by.items()}
                for s, by in results.items()},
        ci_level=ci_level)


def _plot_curves(report: Report, metric: str, dest: Path) -> bool:
    import matplotlib.pyplot as plt

    scenarios = [s for s, by in report.curves.items() if by]
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.6),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for method, curve in report.curves[scenario].items():
            labels = list(curve)
            ax.plot(range(len(labels)), [curve[k].get(metric, np.nan) for k in labels],
                    marker="o", lw=2.2 if method == report.candidate else 1.2, label=method)
            ax.set_xticks(range(len(labels)), labels)
        ax.set_title(scenario)
        ax.set_xlabel("support ratings")
        ax.set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return True


def _plot_comparison(report: Report, metric: str, dest: Path) -> None:
    import matplotlib.pyplot as plt

    scenarios = list(report.metrics)
    methods = sorted({m for by in report.metrics.values() for m in by})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(scenarios) * 1.5), 3.8))
    for i, method in enumerate(methods):
        vals = [report.metrics[s].get(method, {}).get(metric, np.nan) for s in scenarios]
        ivs = [report.intervals.get(s, {}).get(method, {}).get(metric) for s in scenarios]
        err = np.array([[v - iv[0], iv[1] - v] if iv else [0.0, 0.0]
                        for v, iv in zip(vals, ivs)]).T
        ax.bar(np.arange(len(scenarios)) + i * width, vals, width, yerr=err, label=method,
               capsize=2)
    ax.set_xticks(np.arange(len(scenarios)) + width * (len(methods) - 1) / 2, scenarios)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def write_report(report: Report, out_dir: str | Path,
                 plot_metrics: tuple[str, ...] = ("mae", "ndcg_at_3")) -> dict[str, Path]:
    """Write report.json, report.md and PNG plots into ``out_dir`` atomically; return paths."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    out_dir = Path(out_dir)
    names: list[str] = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(report.to_json() + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        names += ["report.json", "report.md"]
        available = {n for by in report.metrics.values() for v in by.values() for n in v}
        for metric in plot_metrics:
            if metric not in available:
                log.warning("plot metric %s is not in the report; skipped", metric)
                continue
            if _plot_curves(report, metric, tmp / f"adaptation_{metric}.png"):
                names.append(f"adaptation_{metric}.png")
            _plot_comparison(report, metric, tmp / f"scenarios_{metric}.png")
            names.append(f"scenarios_{metric}.png")
    return {n: out_dir / n for n in names}
