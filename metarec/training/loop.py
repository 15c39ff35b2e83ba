"""The one training loop: meta-train a model with a learner, validate, stop early, checkpoint.

``meta_train`` runs AdamW on the meta-parameters (the model's and the learner's own, such as
Meta-SGD's rates), bf16 autocast on CUDA, gradient clipping, validation every ``eval_every``
steps (and once before the first step) with early stopping on the validation MAE, optional
fresh support/query resplits of the training tasks at every draw, support sizes drawn over the
whole few-shot range (``train.support_*``, :func:`metarec.meta.inner.sample_support`), and
resumable checkpoints: a run interrupted and resumed from its last checkpoint ends with exactly
the parameters of an uninterrupted run with the same seed (task sampling, resplits and support
sizes use their own seeded generator, saved in the checkpoint).
Metrics go to callbacks ``(step, metrics) -> None``; MLflow logging is one such callback.
``train.fast_step`` (not "off") runs each step through :class:`metarec.training.fast.FastStep`
(no host synchronisation inside a step): the training loss then reaches the callbacks as its
mean over the last ``eval_every`` steps, and a non-finite loss stops the run at that point.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from metarec.config import TrainConfig
from metarec.data.arrays import TaskArrays, limit_support
from metarec.data.tasks import rotate_queries
from metarec.evaluation.metrics import ndcg_at_k
from metarec.io import load_state, save_state
from metarec.meta.inner import make_batch, resplit, sample_support
from metarec.models.estimator import Estimator
from metarec.training.calibration import calibrate_prior
from metarec.training.holdout import hold_out_ratings, training_ratings
from metarec.training.fast import FastStep, check_mode, make_optimizer

if TYPE_CHECKING:
    from metarec.training.distributed import World

log = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], None]
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a training run produced: the best weights (by validation MAE) and its history."""

    model_state: dict[str, Tensor]
    learner_state: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    best_step: int = 0
    best_valid_mae: float = math.inf
    stopped_early: bool = False
    prior_shift: float | None = None  # what calibrate_prior added to the output bias
    # "valid_shots", or "fallback_shots" when the weights kept are the fallback criterion's
    # (train.fallback_shots: the valid_shots error never beat step 0, the fallback's did).
    criterion: str = "valid_shots"
    fallback_valid_mae: float | None = None  # the fallback error of the weights kept, if used


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when a GPU is present, else cpu; ``"cuda"`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA GPU is available")
    return torch.device(name)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def predict(model: Estimator, learner: nn.Module, tasks: TaskArrays, cfg: TrainConfig
            ) -> np.ndarray:
    """(N, Q) float32 query scores: each task adapted on its support set, then scored.

    Tasks are processed ``cfg.eval_batch`` at a time on the model's device.
    """
    device = next(model.parameters()).device
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(device, cfg.amp):
        for start in range(0, len(tasks), cfg.eval_batch):
            index = np.arange(start, min(start + cfg.eval_batch, len(tasks)))
            batch = make_batch(model.user_table, tasks, index, device)
            out.append(learner.predict(model, batch).float().cpu().numpy())
    model.train(was_training)
    q = tasks.query_items.shape[1]
    return np.concatenate(out, 0) if out else np.zeros((0, q), np.float32)


def task_auc(scores: np.ndarray, tasks: TaskArrays) -> np.ndarray:
    """(N,) within-query AUC of each implicit task: the chance that a positive outscores a
    sampled negative of the same query (ties count half); NaN for a task without both."""
    mask = tasks.query_mask.astype(bool)
    pos = mask & (tasks.query_ratings > 0)
    neg = mask & (tasks.query_ratings <= 0)
    diff = scores[:, :, None] - scores[:, None, :]  # [n, i, j]: positive i vs negative j
    pairs = pos[:, :, None] & neg[:, None, :]
    wins = ((diff > 0) + 0.5 * (diff == 0)) * pairs
    n_pairs = pairs.sum((1, 2))
    return np.where(n_pairs > 0, wins.sum((1, 2)) / np.maximum(n_pairs, 1), np.nan)


def query_auc(scores: np.ndarray, tasks: TaskArrays) -> float:
    """Mean over tasks of :func:`task_auc`; tasks without a positive and a negative are left
    out."""
    auc = task_auc(scores, tasks)
    if np.isnan(auc).all():
        raise ValueError("validation tasks hold no query with both a positive and a negative")
    return float(np.nanmean(auc))


def _valid_scores(model: Estimator, learner: nn.Module, tasks: TaskArrays, cfg: TrainConfig,
                  shots: tuple | None = None) -> list[np.ndarray]:
    """``tasks``' query scores at each support size of ``shots`` (default ``cfg.valid_shots``;
    a fixed seeded subset of the support; "all": all of it), in that order."""
    key = "train.valid_shots" if shots is None else "train.fallback_shots"
    shots = cfg.valid_shots if shots is None else shots
    if not shots:
        raise ValueError(f"{key} is empty; give support sizes (ints >= 0) or 'all'")
    out = []
    for k in shots:
        if k != "all" and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"{key}: {k!r} is neither 'all' nor an int >= 0")
        out.append(predict(model, learner, tasks if k == "all" else limit_support(tasks, k, 0),
                           cfg))
    return out


def _task_error(scores: np.ndarray, tasks: TaskArrays, metric: str) -> np.ndarray:
    """(N,) each task's validation error at one support size: 1 - its AUC for implicit tasks,
    else by ``metric`` (``train.valid_metric``): its query MAE, or 1 - its nDCG@k for
    "ndcg_at_<k>" (NaN for a task with no query rating, or without both labels / any gain)."""
    mask = tasks.query_mask.astype(bool)
    if tasks.implicit:
        return 1.0 - task_auc(scores, tasks)
    if metric == "mae":
        err = (np.abs(scores - tasks.query_ratings) * mask).sum(1)
        return np.where(mask.any(1), err / np.maximum(mask.sum(1), 1), np.nan)
    return 1.0 - ndcg_at_k(scores, tasks.query_ratings, mask, valid_metric_k(metric))


def valid_metric_k(metric: str) -> int:
    """The cut-off of a ranking ``train.valid_metric`` ("ndcg_at_3" -> 3); an error naming the
    setting for anything but "mae" or "ndcg_at_<k>", k >= 1."""
    head, _, k = metric.rpartition("_at_")
    if head != "ndcg" or not k.isdigit() or int(k) < 1:
        raise ValueError(f"train.valid_metric: {metric!r} is neither 'mae' nor 'ndcg_at_<k>' "
                         "(k >= 1)")
    return int(k)


def valid_error_name(cfg: TrainConfig, implicit: bool) -> str:
    """What the validation error of early stopping is, for logs and reports: "MAE",
    "1 - ndcg_at_<k>" (``cfg.valid_metric``) or, on implicit data, "1 - AUC"."""
    return "1 - AUC" if implicit else "MAE" if cfg.valid_metric == "mae" else \
        f"1 - {cfg.valid_metric}"


def task_errors(model: Estimator, learner: nn.Module, tasks: TaskArrays, cfg: TrainConfig,
                shots: tuple | None = None) -> np.ndarray:
    """(N,) each task's validation error averaged over the support sizes of ``shots``
    (default ``cfg.valid_shots``), as :func:`valid_mae` cuts them: its query MAE (or 1 - its
    nDCG@k, ``cfg.valid_metric``), or 1 - its AUC for implicit tasks (NaN for a task with no
    query rating, or without both labels)."""
    return np.mean([_task_error(scores, tasks, cfg.valid_metric)
                    for scores in _valid_scores(model, learner, tasks, cfg, shots)], 0)


def valid_mae(model: Estimator, learner: nn.Module, tasks: TaskArrays, cfg: TrainConfig,
              shots: tuple | None = None) -> float:
    """Mean absolute error over every real query rating of ``tasks``, averaged over the support
    sizes of ``shots`` (default ``cfg.valid_shots``; each a fixed seeded subset of the support;
    "all": all of it).

    ``cfg.valid_metric`` "ndcg_at_<k>": 1 - the mean over tasks of their nDCG@k instead (the
    ranking of each query set). Implicit tasks (labels and sampled negatives, scores are
    logits): 1 - the within-query AUC (:func:`query_auc`) instead, the error early stopping
    minimises for bce and bpr alike.
    """
    mask = tasks.query_mask.astype(bool)
    if not mask.any():
        raise ValueError("validation tasks hold no query ratings")

    def error(scores: np.ndarray) -> float:
        if tasks.implicit:
            return 1.0 - query_auc(scores, tasks)
        if cfg.valid_metric == "mae":  # pooled over every query rating
            return float(np.abs(scores - tasks.query_ratings)[mask].mean())
        return float(np.nanmean(_task_error(scores, tasks, cfg.valid_metric)))

    return float(np.mean([error(s) for s in _valid_scores(model, learner, tasks, cfg, shots)]))


def fit_item_stats(model: Estimator, train_tasks: TaskArrays) -> None:
    """Fit the model's item statistics (if it has them) on the ratings of ``train_tasks``:
    support and query, or support only (``model.item_stats_from``)."""
    if not getattr(model, "fits_training_ratings", False):
        return
    items, ratings, users, _, _ = training_ratings(  # task index = training user
        train_tasks, with_query=getattr(model, "item_stats_from", "all") != "support")
    model.fit_item_stats(torch.as_tensor(items, dtype=torch.long),
                         torch.as_tensor(ratings, dtype=torch.float64), model.item_stats_shrinkage,
                         user_index=torch.as_tensor(users, dtype=torch.long))


@torch.no_grad()
def init_output_bias(model: Estimator, train_tasks: TaskArrays) -> None:
    """Start the decision MLP's output bias at the mean training rating (support and query;
    implicit tasks: the log-odds of the share of positives).

    The unadapted model, the prediction for a user without ratings, then starts at the rating
    scale's centre (the item's shrunk mean with ``item_offset``) instead of near 0, a prior
    that AdamW's small steps would need thousands of steps to reach.
    """
    sm, qm = train_tasks.support_mask.astype(bool), train_tasks.query_mask.astype(bool)
    ratings = np.concatenate([train_tasks.support_ratings[sm], train_tasks.query_ratings[qm]])
    if len(ratings):
        mean = float(ratings.astype(np.float64).mean())
        if train_tasks.implicit:  # scores are logits: start at the log-odds of a positive
            p = min(max(mean, 1e-3), 1.0 - 1e-3)
            mean = math.log(p / (1.0 - p))
        model.decision[-1].bias.fill_(mean)


def _sampler_next(order: Tensor, pos: int, n: int, k: int, gen: torch.Generator
                  ) -> tuple[np.ndarray, Tensor, int]:
    """Next k task indices from epoch-wise permutations of n tasks (reshuffled per epoch)."""
    picked = []
    while len(picked) < k:
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        take = min(k - len(picked), n - pos)
        picked.extend(order[pos:pos + take].tolist())
        pos += take
    return np.asarray(picked, dtype=np.int64), order, pos


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _plain_step(model: Estimator, learner: nn.Module, optimizer: torch.optim.Optimizer,
                params: list[nn.Parameter], train_tasks: TaskArrays, index: np.ndarray,
                keys: Tensor | None, draws: Tensor | None, cfg: TrainConfig,
                device: torch.device, world: "World | None", step: int) -> Tensor:
    """One plain meta-training step (``train.fast_step: off``); returns its loss."""
    batch = make_batch(model.user_table, train_tasks, index, device)
    if keys is not None:
        batch = resplit(batch, keys, implicit=train_tasks.implicit)
    if draws is not None:
        batch = sample_support(batch, draws, full_prob=cfg.support_full_prob,
                               max_shots=cfg.support_max_shots, dist=cfg.support_shots,
                               implicit=train_tasks.implicit)
    with _autocast(device, cfg.amp):
        loss = learner.meta_loss(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"meta-loss is {float(loss)} at step {step + 1}; "
                                 "lower train.lr or meta.inner_lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if world is not None:
        world.average_gradients(params)
    if cfg.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
    optimizer.step()
    return loss


def meta_train(model: Estimator, learner: nn.Module, train_tasks: TaskArrays,
               valid_tasks: TaskArrays, cfg: TrainConfig, seed: int,
               callbacks: Iterable[Callback] = (), checkpoint_dir: str | Path | None = None,
               resume: bool = False, world: "World | None" = None,
               warm_start: bool = False) -> TrainResult:
    """Meta-train ``model`` with ``learner`` on ``train_tasks``; returns the best weights.

    Every ``cfg.eval_every`` steps (and at the end) the validation MAE is computed with
    :func:`predict`; training stops after ``cfg.patience`` validations without improvement.
    With ``checkpoint_dir``, a checkpoint is written every ``cfg.checkpoint_every`` steps;
    ``resume=True`` continues from it when it exists. The model ends holding the best weights.
    With ``world`` (metarec.training.distributed), each rank trains on its slice of every batch, the
    gradients are averaged across ranks, and only rank 0 writes checkpoints.
    ``warm_start``: ``model`` already holds trained meta-parameters (metarec.training.warmstart);
    its output bias is kept instead of being set to the mean training rating.
    ``cfg.fallback_shots`` (non-empty): while the ``valid_shots`` error has never beaten the
    step-0 weights, the error at these support sizes is followed too, patience runs out only
    when neither improves, and when the first still ends at step 0 the run keeps the fallback's
    best weights instead (``TrainResult.criterion`` "fallback_shots"). On data where the
    untrained head is already strong at full support (ML-100K users with 5..500 ratings), the
    full-support criterion alone would keep the untrained model although meta-training helps
    at small support sizes.
    """
    if len(train_tasks) == 0 or len(valid_tasks) == 0:
        raise ValueError(f"need training and validation tasks, got {len(train_tasks)} and "
                         f"{len(valid_tasks)}")
    if cfg.valid_metric != "mae":
        valid_metric_k(cfg.valid_metric)  # a clear error before any training
    valid_tasks = rotate_queries(valid_tasks, cfg.valid_rotations, seed)
    device = resolve_device(cfg.device)
    check_mode(cfg.fast_step, device, distributed=world is not None)
    fit_item_stats(model, train_tasks)
    if cfg.hold_out != "none":  # each training rating meets its item fitted without it
        train_tasks = hold_out_ratings(model, train_tasks, factors=cfg.hold_out == "all")
    if not warm_start:
        init_output_bias(model, train_tasks)
    model.to(device).train()
    learner.to(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for m in (model, learner) for p in m.parameters()]
    optimizer = make_optimizer(params, cfg, device)
    n = len(train_tasks)
    support_width = train_tasks.support_items.shape[1]
    width = support_width + train_tasks.query_items.shape[1]
    order, pos, step, bad = torch.randperm(n, generator=gen), 0, 0, 0
    history: list[dict[str, float]] = []
    best = dict(mae=math.inf, step=0, model=_cpu_state(model), learner=_cpu_state(learner))
    # train.fallback_shots: a second criterion, followed only while the first has never moved
    # off step 0 (see the docstring); "valid": the valid_shots error at the fallback's best.
    fallback = (dict(mae=math.inf, step=0, valid=math.inf, bad=0, model=None, learner=None)
                if cfg.fallback_shots else None)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    if resume and ckpt is not None and ckpt.exists():
        state = load_state(ckpt)
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        order, pos, step, bad = state["order"], int(state["pos"]), int(state["step"]), int(state["bad"])
        history = list(state["history"])
        best = dict(mae=float(state["best_mae"]), step=int(state["best_step"]),
                    model=state["best_model"], learner=state["best_learner"])
        if fallback is not None and state.get("fallback") is not None:
            fallback = dict(state["fallback"])
        log.info("resumed from %s at step %d", ckpt, step)

    def evaluate() -> bool:
        """Validate; record; return True when patience is exhausted."""
        nonlocal bad
        mae = valid_mae(model, learner, valid_tasks, cfg)
        metrics = {"valid_mae": mae, "best_valid_mae": min(mae, best["mae"])}
        if mae < best["mae"]:
            best.update(mae=mae, step=step, model=_cpu_state(model), learner=_cpu_state(learner))
            bad = 0
        else:
            bad += 1
        waited = bad
        if fallback is not None and best["step"] == 0:
            # The first criterion has not beaten the start (yet): follow the fallback too, and
            # stop only when neither has improved for cfg.patience validations.
            other = valid_mae(model, learner, valid_tasks, cfg, cfg.fallback_shots)
            metrics["valid_fallback_mae"] = other
            if other < fallback["mae"]:
                fallback.update(mae=other, step=step, valid=mae, bad=0, model=_cpu_state(model),
                                learner=_cpu_state(learner))
            else:
                fallback["bad"] += 1
            waited = min(bad, fallback["bad"])
        history.append({"step": float(step), **metrics})
        for cb in callbacks:
            cb(step, metrics)
        return waited >= cfg.patience

    # A resumed run whose patience was already used up (it stopped at that checkpoint) is done.
    stopped = bad >= cfg.patience
    if step == 0 and not history:
        # The starting point competes too: when meta-training only makes validation worse,
        # the initial weights are what the run returns.
        stopped = evaluate()
    fast = (None if cfg.fast_step == "off" else
            FastStep(model, learner, optimizer, train_tasks, cfg, device, world=world))
    bar = tqdm(total=cfg.max_steps, initial=step, disable=None if cfg.progress else True,
               desc="meta-train", leave=False)
    while step < cfg.max_steps and not stopped:
        index, order, pos = _sampler_next(order, pos, n, cfg.tasks_per_batch, gen)
        keys = torch.rand(len(index), width, generator=gen) if cfg.resplit else None
        draws = (torch.rand(len(index), 2 + support_width, generator=gen)
                 if cfg.support_full_prob < 1 else None)
        if world is not None:
            index = world.shard(index)
            keys = None if keys is None else world.shard(keys)
            draws = None if draws is None else world.shard(draws)
        if fast is not None:
            fast(index, keys, draws)
        else:
            loss = _plain_step(model, learner, optimizer, params, train_tasks, index, keys,
                               draws, cfg, device, world, step)
        step += 1
        bar.update(1)
        if fast is None:
            for cb in callbacks:
                cb(step, {"train_loss": float(loss.detach())})
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            if fast is not None:  # the loss since the last validation: one sync per window
                mean_loss, _ = fast.drain()
                for cb in callbacks:
                    cb(step, {"train_loss": mean_loss})
            stopped = evaluate()
        if (ckpt is not None and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
                and (world is None or world.is_main)):
            save_state(ckpt, dict(model=_cpu_state(model), learner=_cpu_state(learner),
                             optimizer=optimizer.state_dict(), sampler_rng=gen.get_state(),
                             torch_rng=torch.get_rng_state(), order=order, pos=pos, step=step,
                             bad=bad, history=history, best_mae=best["mae"],
                             best_step=best["step"], best_model=best["model"],
                             best_learner=best["learner"], fallback=fallback))
    bar.close()
    criterion, fallback_mae = "valid_shots", None
    if fallback is not None and best["step"] == 0 and fallback["step"] > 0:
        log.warning("validation MAE at train.valid_shots %s never beat step 0 (%.4f); keeping "
                    "step %d, the best at train.fallback_shots %s (%.4f vs %.4f at step 0)",
                    list(cfg.valid_shots), best["mae"], fallback["step"],
                    list(cfg.fallback_shots), fallback["mae"], history[0].get(
                        "valid_fallback_mae", math.nan))
        best = dict(mae=fallback["valid"], step=fallback["step"], model=fallback["model"],
                    learner=fallback["learner"])
        criterion, fallback_mae = "fallback_shots", float(fallback["mae"])
    model.load_state_dict(best["model"])
    learner.load_state_dict(best["learner"])
    shift = (calibrate_prior(model, train_tasks, lambda t: predict(model, learner, t, cfg))
             if cfg.calibrate_prior else None)
    if shift is not None:
        best["model"] = _cpu_state(model)
    model.clear_virtual_rows()
    log.info("meta-training stopped at step %d (best validation %s %.4f at step %d)", step,
             valid_error_name(cfg, valid_tasks.implicit), best["mae"], best["step"])
    return TrainResult(model_state=copy.deepcopy(best["model"]),
                       learner_state=copy.deepcopy(best["learner"]), history=history,
                       steps=step, best_step=int(best["step"]), best_valid_mae=float(best["mae"]),
                       stopped_early=stopped, prior_shift=shift, criterion=criterion,
                       fallback_valid_mae=fallback_mae)
