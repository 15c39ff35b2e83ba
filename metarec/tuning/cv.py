"""K-fold cross-validation over the training + validation users: what tuning scores.

The protocol's test users are never read: :func:`load_cv_inputs` loads only the training and
validation task sets, and :func:`pool_tasks` pools them. The pooled users are split into folds;
users whose support fills the width (those with ``tasks.max_ratings`` ratings or more,
subsampled) always train, so held-out users are of the protocol's kind. Each fold is held out
once and scored while the rest trains; early stopping (and ``head_factors: auto``'s choice)
looks at other users, a ``stop_fraction`` share of the fold's training users of the protocol's
kind, as the pipeline's validation users are apart from its test users. Stopping on the scored
users themselves (``stop_fraction`` 0, the former behaviour) flatters whichever setting has the
noisier validation curve. Held-out tasks are scored along the adaptation curve: their support
cut to each of ``shots`` random ratings, and whole.

``benchmarks/cv_tune.py`` (settings compared by hand) and :mod:`metarec.tuning.objective`
(the Optuna study) share these functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from metarec.config import Config
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.evaluation.metrics import task_scores
from metarec.evaluation.report import ALL_SHOTS
from metarec.evaluation.scoring import limit_support
from metarec.pipeline.inputs import Inputs, concat_tasks

if TYPE_CHECKING:
    from torch import nn

    from metarec.config import ModelConfig
    from metarec.models.estimator import Estimator
    from metarec.training.loop import TrainResult

# Folds are drawn with their own seed, apart from the training seed: every setting and every
# seed is compared on the same held-out users.
FOLD_SEED = 1234
# Share of a fold's training users (of the protocol's kind) that early stopping looks at
# instead: ML-100K's 4 folds stop on 39 users each (the pipeline's validation set: 58).
STOP_FRACTION = 0.1

Predict = Callable[[TaskArrays], np.ndarray]


@dataclass(frozen=True)
class Fold:
    """One fold: ``train`` (every other user but ``stop``'s), ``held`` (this fold's users,
    whole support), ``curve`` (``held`` once per support size of ``shots``, stacked in that
    order: ``len(shots) * len(held)`` tasks) and ``stop`` (the users early stopping looks at:
    see the module docstring; ``held`` itself with ``stop_fraction`` 0)."""

    index: int
    train: TaskArrays
    held: TaskArrays
    curve: TaskArrays
    shots: tuple[str, ...]
    stop: TaskArrays


def load_cv_inputs(cfg: Config) -> Inputs:
    """Features and the training + validation task sets only: the test sets stay on disk."""
    import json
    from pathlib import Path

    from metarec.data.tasks import MANIFEST_FILE, load_tasks
    from metarec.features.build import load_features

    path = Path(cfg.tasks.out_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec tasks build` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    names = [*manifest["training"], *manifest["validation"]]
    return Inputs(load_features(cfg.features.out_dir), load_tasks(cfg.tasks.out_dir, names),
                  tuple(manifest["training"]), tuple(manifest["validation"]), manifest)


def pool_tasks(inputs: Inputs) -> TaskArrays:
    """The training and validation tasks as one pool (no evaluation scenario is touched)."""
    return concat_tasks([inputs.train, inputs.valid])


def split_shots(shots: tuple[int | str, ...]) -> tuple[list[int], tuple[str, ...]]:
    """Support sizes -> (the cut sizes, every size's label in curve order, ``all`` last)."""
    sizes = sorted({int(s) for s in shots if s != ALL_SHOTS})
    labels = tuple(str(n) for n in sizes) + ((ALL_SHOTS,) if ALL_SHOTS in shots else ())
    if not labels:
        raise ValueError("no support size to score")
    return sizes, labels


def make_folds(pool: TaskArrays, n_folds: int, shots: tuple[int | str, ...], seed: int,
               fold_seed: int = FOLD_SEED, stop_fraction: float = STOP_FRACTION) -> list[Fold]:
    """``n_folds`` folds of the pooled users by id (see the module docstring); the curve of
    fold k cuts supports with seed ``seed + k``; its ``stop`` users are ``stop_fraction`` of
    the other folds' users (at least one), drawn with ``fold_seed + 1 + k``."""
    if not 0.0 <= stop_fraction < 1.0:
        raise ValueError(f"stop_fraction must be in [0, 1), got {stop_fraction}")
    full = pool.support_mask.all(1)
    held_ids = np.random.default_rng(fold_seed).permutation(np.sort(pool.user_ids[~full]))
    if n_folds < 2 or len(held_ids) < n_folds:
        raise ValueError(f"need 2 <= folds <= {len(held_ids)} users that can be held out, got "
                         f"{n_folds} folds")
    sizes, labels = split_shots(shots)
    folds = []
    for k, ids in enumerate(np.array_split(held_ids, n_folds)):
        held_rows = np.nonzero(np.isin(pool.user_ids, ids))[0]
        held = pool.subset(held_rows)
        parts = [limit_support(held, n, seed + k) for n in sizes]
        curve = concat_tasks(parts + ([held] if ALL_SHOTS in labels else []))
        stop_rows = held_rows
        if stop_fraction > 0:
            others = np.setdiff1d(held_ids, ids)
            n_stop = max(1, int(round(stop_fraction * len(others))))
            picked = np.random.default_rng(fold_seed + 1 + k).choice(others, n_stop, replace=False)
            stop_rows = np.nonzero(np.isin(pool.user_ids, picked))[0]
        train_rows = np.setdiff1d(np.arange(len(pool)), np.union1d(held_rows, stop_rows))
        folds.append(Fold(k, pool.subset(train_rows), held, curve, labels,
                          pool.subset(stop_rows)))
    return folds


def per_task_metrics(pred: np.ndarray, tasks: TaskArrays, names: list[str]
                     ) -> dict[str, np.ndarray]:
    """``{metric: (N,) value per task}``: MAE/RMSE over the task's query ratings, ranking
    metrics of its query set."""
    ranked = [n for n in names if n not in ("mae", "rmse")]
    ts = task_scores(pred, tasks.query_ratings, tasks.query_mask, ranked)
    count = np.maximum(ts.count, 1)
    out = {"mae": ts.abs_err / count, "rmse": np.sqrt(ts.sq_err / count), **ts.ranking}
    return {n: out[n] for n in names}


def fold_scores(predict: Predict, fold: Fold, names: list[str]) -> dict[str, np.ndarray]:
    """``{metric: (len(shots), len(held))}``: each held-out task at each support size."""
    values = per_task_metrics(predict(fold.curve), fold.curve, names)
    return {m: v.reshape(len(fold.shots), len(fold.held)) for m, v in values.items()}


def fit_learner(cfg: Config, features: FeatureArrays, train: TaskArrays, valid: TaskArrays,
                learner: str | None = None, model_cfg: ModelConfig | None = None
                ) -> tuple[Estimator, nn.Module, TrainResult]:
    """Meta-train ``learner`` (default ``meta.learner``) on ``train`` with early stopping on
    ``valid``, from seed ``cfg.seed``, with ``model_cfg`` (default ``cfg.model``); returns the
    model, the learner and the training result (no ``head_factors: auto`` choice here)."""
    from metarec.config.implicit import with_resolved_loss
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model
    from metarec.training.loop import meta_train

    torch.manual_seed(cfg.seed)
    model = build_model(features, model_cfg or cfg.model)
    found = build_learner(model, with_resolved_loss(cfg.meta, cfg.data), learner)
    return model, found, meta_train(model, found, train, valid, cfg.train, cfg.seed)


def train_learner(cfg: Config, features: FeatureArrays, train: TaskArrays, valid: TaskArrays,
                  learner: str | None = None) -> tuple[Predict, dict]:
    """Meta-train ``learner`` (default ``meta.learner``) with ``cfg``; returns its predictor
    and a summary (best step, steps, validation MAE, seconds; with ``model.head_factors: auto``
    the choice of :mod:`metarec.training.selection`, made on ``valid``)."""
    from metarec.training import selection
    from metarec.training.loop import predict, task_errors

    start = time.perf_counter()
    name = learner or cfg.meta.learner
    (model, found, result), _, choice = selection.select(
        selection.candidates(cfg.model, name),
        lambda model_cfg: fit_learner(cfg, features, train, valid, name, model_cfg),
        lambda t: task_errors(t[0], t[1], valid, cfg.train),
        lambda t: task_errors(t[0], t[1], valid, cfg.train, cfg.train.fallback_shots),
        lambda t: t[2].criterion == "fallback_shots", lambda t: t[2].best_step == 0)
    model.eval()
    summary = _summary(result, start)
    if choice is not None:
        summary["head_factors"] = choice.to_dict()
    return (lambda t: predict(model, found, t, cfg.train)), summary


def train_fold_baselines(cfg: Config, features: FeatureArrays, train: TaskArrays,
                         valid: TaskArrays) -> tuple[dict[str, Predict], dict]:
    """The four baselines fitted on ``train`` (the global network early-stopped on
    ``valid``); returns their predictors by name and the global network's summary."""
    from metarec.config.implicit import with_resolved_loss
    from metarec.training.baselines import train_baselines

    start = time.perf_counter()
    found, result = train_baselines(features, train, valid, cfg.model,
                                    with_resolved_loss(cfg.meta, cfg.data), cfg.train, cfg.seed)
    return {n: b.predict for n, b in found.items()}, _summary(result, start)


def _summary(result, start: float) -> dict:
    return {"best_step": result.best_step, "steps": result.steps,
            "criterion": getattr(result, "criterion", "valid_shots"),
            "valid_mae": round(result.best_valid_mae, 4),
            "seconds": round(time.perf_counter() - start, 1)}


def paired(candidate: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Mean of ``candidate - baseline`` over paired tasks and its standard error."""
    d = np.asarray(candidate, float) - np.asarray(baseline, float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean over tasks and its standard error."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
