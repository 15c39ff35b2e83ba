"""Baselines reported beside every meta-learner, all behind ``predict(tasks) -> (N, Q) scores``.

- ``user_mean``: the mean of the task's own support ratings (the floor any personalisation
  must clear); a task without support ratings gets the global training mean;
- ``item_mean``: each item's training mean, shrunk toward the global mean by
  ``meta.item_mean_shrinkage`` pseudo-ratings (unseen items get the global mean): popularity;
- ``global``: the same network trained on all training ratings without adaptation;
- ``finetune``: the global network plus plain fine-tuning (all parameters, first order,
  ``meta.finetune_steps`` steps of ``meta.finetune_lr``) on each task's support set;
- ``most_pop``, ``item_knn``: ranking baselines for full-catalog metrics
  (:mod:`metarec.training.ranking_baselines`; their scores are not ratings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from metarec.config import MetaConfig, ModelConfig, TrainConfig
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.meta.learners import GlobalLearner, GradientLearner
from metarec.models.estimator import Estimator, build_model
from metarec.training.loop import TrainResult, meta_train, predict
from metarec.training.ranking_baselines import (RANKING_BASELINES, ItemKNNBaseline,
                                                MostPopBaseline)


class Baseline(Protocol):
    """A rating predictor for the query items of few-shot tasks."""

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        """(N, Q) float32 scores of each task's query items."""
        ...


def task_ratings(tasks: TaskArrays) -> tuple[np.ndarray, np.ndarray]:
    """Every real (item row, rating) of ``tasks``, support and query: two (R,) arrays."""
    sm, qm = tasks.support_mask.astype(bool), tasks.query_mask.astype(bool)
    items = np.concatenate([tasks.support_items[sm], tasks.query_items[qm]])
    ratings = np.concatenate([tasks.support_ratings[sm], tasks.query_ratings[qm]])
    return items.astype(np.int64), ratings.astype(np.float64)


@dataclass
class UserMeanBaseline:
    """Predicts the mean of the task's support ratings for every query item."""

    global_mean: float

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        mask = tasks.support_mask.astype(bool)
        count = mask.sum(1)
        total = np.where(mask, tasks.support_ratings, 0.0).sum(1)
        mean = np.where(count > 0, total / np.maximum(count, 1), self.global_mean)
        return np.repeat(mean[:, None], tasks.query_items.shape[1], 1).astype(np.float32)


@dataclass
class ItemMeanBaseline:
    """Predicts each query item's (shrunk) training mean rating."""

    item_means: np.ndarray  # (I,) per item row
    global_mean: float

    @classmethod
    def fit(cls, item_rows: np.ndarray, ratings: np.ndarray, n_items: int,
            shrinkage: float) -> "ItemMeanBaseline":
        """Means of ``ratings`` (R,) per item row (R,), shrunk by ``shrinkage`` pseudo-counts."""
        if ratings.size == 0:
            raise ValueError("item_mean baseline: no training ratings")
        if shrinkage < 0:
            raise ValueError(f"item_mean_shrinkage must be >= 0, got {shrinkage}")
        mu = float(ratings.mean())
        total = np.bincount(item_rows, weights=ratings, minlength=n_items)
        count = np.bincount(item_rows, minlength=n_items).astype(np.float64)
        means = (total + shrinkage * mu) / np.maximum(count + shrinkage, 1e-12)
        means[count == 0] = mu
        return cls(item_means=means, global_mean=mu)

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        return self.item_means[tasks.query_items].astype(np.float32)


@dataclass
class NetworkBaseline:
    """A trained estimator with a (possibly non-adapting) learner, evaluated like a learner."""

    model: torch.nn.Module
    learner: torch.nn.Module
    cfg: TrainConfig

    def predict(self, tasks: TaskArrays) -> np.ndarray:
        return predict(self.model, self.learner, tasks, self.cfg)


BASELINES = ("user_mean", "item_mean", "global", "finetune", *RANKING_BASELINES)


def train_global_network(features: FeatureArrays, train_tasks: TaskArrays,
                         valid_tasks: TaskArrays, model_cfg: ModelConfig, train_cfg: TrainConfig,
                         seed: int, loss: str = "mse") -> tuple[Estimator, TrainResult]:
    """The network of the ``global`` and ``finetune`` baselines: the estimator trained on every
    training rating without adaptation (the same loop, early stopping and seed as a learner),
    by ``loss`` (the learner's resolved ``meta.loss``: bce for implicit feedback)."""
    torch.manual_seed(seed)
    model = build_model(features, model_cfg)
    return model, meta_train(model, GlobalLearner(loss), train_tasks, valid_tasks, train_cfg,
                             seed)


def assemble_baselines(network: Estimator, train_tasks: TaskArrays, n_items: int,
                       meta_cfg: MetaConfig, train_cfg: TrainConfig) -> dict[str, Baseline]:
    """The baselines by name (:data:`BASELINES`) around a trained global ``network``:
    the means, most_pop and item_knn are fitted on ``train_tasks``' ratings (support and
    query), fine-tuning adapts every parameter of the network for ``meta.finetune_steps``
    first-order steps."""
    items, ratings = task_ratings(train_tasks)
    item_mean = ItemMeanBaseline.fit(items, ratings, n_items, meta_cfg.item_mean_shrinkage)
    finetune = GradientLearner(network, adapted="all", steps=meta_cfg.finetune_steps,
                               lr=meta_cfg.finetune_lr, first_order=True, learn_lr=False,
                               loss=meta_cfg.loss)
    return {"user_mean": UserMeanBaseline(global_mean=item_mean.global_mean),
            "item_mean": item_mean,
            "global": NetworkBaseline(network, GlobalLearner(meta_cfg.loss), train_cfg),
            "finetune": NetworkBaseline(network, finetune.to(next(network.parameters()).device),
                                        train_cfg),
            "most_pop": MostPopBaseline.fit(train_tasks, n_items),
            "item_knn": ItemKNNBaseline.fit(train_tasks, n_items)}


def train_baselines(features: FeatureArrays, train_tasks: TaskArrays, valid_tasks: TaskArrays,
                    model_cfg: ModelConfig, meta_cfg: MetaConfig, train_cfg: TrainConfig,
                    seed: int) -> tuple[dict[str, Baseline], TrainResult]:
    """Fit every baseline (:data:`BASELINES`); returns them by name and the global network's training result."""
    network, result = train_global_network(features, train_tasks, valid_tasks, model_cfg,
                                           train_cfg, seed, loss=meta_cfg.loss)
    return assemble_baselines(network, train_tasks, len(features.item_ids), meta_cfg,
                              train_cfg), result
