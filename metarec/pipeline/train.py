"""The training stages: meta-train the configured learner, train the baseline network, and
read both back. Artifacts in ``train.out_dir``:

- ``meta_model.pt``: the model's and the learner's state_dicts;
- ``baseline_global.pt``: the global network (the ``global`` and ``finetune`` baselines);
- ``summary.json``: history, best step, validation MAE, the MLflow run the training opened and
  ``model_sha256`` (of meta_model.pt: the identity evaluation, export and registration check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from metarec.config import Config
from metarec.config.implicit import with_resolved_loss
from metarec.data.arrays import FeatureArrays
from metarec.io import file_sha256, load_state, save_state, write_json
from metarec.models.estimator import Estimator
from metarec.pipeline.inputs import Inputs, load_inputs
from metarec.pipeline.lineage import dataset_hash_or_none, git_sha

META_FILE = "meta_model.pt"
GLOBAL_FILE = "baseline_global.pt"
SUMMARY_FILE = "summary.json"


def build_estimator_and_learner(cfg: Config, features: FeatureArrays) -> tuple[Estimator, nn.Module]:
    """The estimator (``model`` section) and the configured learner (``meta`` section), with
    the top-level seed set first so that a rerun builds the same initial weights."""
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(features, cfg.model)
    return model, build_learner(model, with_resolved_loss(cfg.meta, cfg.data))


def train_meta_model(cfg: Config, inputs: Inputs | None = None,
                     callbacks: tuple[Callable[[int, dict[str, float]], None], ...] = (),
                     resume: bool = True, track: bool = True,
                     dagster_run_id: str | None = None, world=None,
                     checkpoint_root: str | Path | None = None) -> dict[str, Any]:
    """Meta-train the configured learner; writes meta_model.pt and summary.json.

    With ``track``, the training is recorded as an MLflow run (params, per-step metrics, the
    checkpoint, lineage tags) whose id lands in summary.json; registration completes that run.
    ``world`` (:class:`metarec.training.distributed.World`): one rank of a torchrun job.
    ``checkpoint_root``: where resumable checkpoints go (default ``train.out_dir/checkpoints``;
    a pipeline run whose outputs are its own keeps them shared, so a rerun resumes).
    """
    from metarec.training.loop import meta_train

    from metarec.config.implicit import check_feedback_settings

    check_feedback_settings(cfg)
    inputs = inputs or load_inputs(cfg.features, cfg.tasks)
    if inputs.train.implicit != (cfg.data.feedback == "implicit"):
        raise ValueError(f"the tasks in {cfg.tasks.out_dir} are "
                         f"{'implicit' if inputs.train.implicit else 'explicit'} but "
                         f"data.feedback is {cfg.data.feedback!r}: run `metarec features build` "
                         f"and `metarec tasks build` again")
    from metarec.training import selection
    from metarec.training.loop import task_errors, valid_error_name

    out = Path(cfg.train.out_dir)
    # Resume only a checkpoint of this very training: same tasks, model, learner, loop and
    # starting point.
    checkpoints = Path(checkpoint_root) if checkpoint_root is not None else out / "checkpoints"

    def fit(model_cfg):
        run_cfg = dataclasses.replace(cfg, model=model_cfg)
        model, learner = build_estimator_and_learner(run_cfg, inputs.features)
        init = warm_start(run_cfg, model, learner, inputs)
        logs = callbacks
        if len(options) > 1 and model_cfg.head_factors:  # the second of two: its own metric names
            logs = tuple((lambda step, metrics, cb=cb: cb(step, {f"head_factors/{k}": v
                                                                for k, v in metrics.items()}))
                         for cb in callbacks)
        result = meta_train(model, learner, inputs.train, inputs.valid, cfg.train, cfg.seed,
                            callbacks=logs, resume=resume,
                            checkpoint_dir=checkpoints / training_fingerprint(run_cfg, inputs, init),
                            world=world, warm_start=init["from"] == "champion")
        return model, learner, result, init

    options = selection.candidates(cfg.model, cfg.meta.learner)
    if len(options) > 1 and cfg.train.init_from == "champion":
        options = _champion_head(cfg, options)
    (model, learner, result, init), model_cfg, choice = selection.select(
        options, fit, lambda t: task_errors(t[0], t[1], inputs.valid, cfg.train),
        lambda t: task_errors(t[0], t[1], inputs.valid, cfg.train, cfg.train.fallback_shots),
        lambda t: t[2].criterion == "fallback_shots", lambda t: t[2].best_step == 0)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    if world is not None and not world.is_main:  # DDP: only rank 0 writes and logs
        return {"learner": cfg.meta.learner, "steps": result.steps,
                "best_step": result.best_step, "best_valid_mae": result.best_valid_mae}
    save_state(out / META_FILE, {"model": result.model_state, "learner": result.learner_state})
    summary = {"learner": cfg.meta.learner, "steps": result.steps, "best_step": result.best_step,
               "best_valid_mae": result.best_valid_mae, "stopped_early": result.stopped_early,
               # what that validation error is (train.valid_metric; 1 - AUC on implicit data)
               "valid_error": valid_error_name(cfg.train, inputs.valid.implicit),
               "prior_shift": result.prior_shift,
               # which early-stopping criterion chose the weights (train.fallback_shots)
               "criterion": result.criterion, "fallback_valid_mae": result.fallback_valid_mae,
               "train_tasks": len(inputs.train), "valid_tasks": len(inputs.valid),
               "history": result.history, "model_sha256": file_sha256(out / META_FILE),
               "init": init,
               # what model.head_factors is for this model ("auto" resolved) and why
               "model": {"head_factors": model_cfg.head_factors,
                         "item_factors": model_cfg.item_factors},
               "head_factors_choice": None if choice is None else choice.to_dict()}
    if track:
        from metarec import registry
        from metarec.config.overrides import applied_overrides, overrides_tags

        # Which reviewed tuning overrides (params.tuned.yaml) these settings include, if any.
        tuned = applied_overrides(cfg)
        summary["mlflow_run_id"] = registry.log_training_run(
            cfg.tracking, params=cfg.to_dict(), epoch_metrics=result.history,
            artifacts={"checkpoint": out / META_FILE,
                       **({"tuning": tuned.path} if tuned is not None else {})},
            data_hash=dataset_hash_or_none(cfg.data), git_sha=git_sha(),
            dagster_run_id=dagster_run_id, tags=overrides_tags(cfg))
        summary["mlflow_run_url"] = registry.run_url(cfg.tracking, summary["mlflow_run_id"])
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _champion_head(cfg: Config, options: list) -> list:
    """``model.head_factors: auto`` with a warm start: the champion's choice (its parameters
    must fit), or both options when there is no champion yet."""
    from metarec.training.warmstart import load_champion

    champion = load_champion(cfg.tracking)
    if champion is None:
        return options
    chosen = champion.params.get("model", {}).get("head_factors")
    return [m for m in options if m.head_factors == chosen] or options[:1]


def resolved_config(cfg: Config) -> Config:
    """``cfg`` with ``model.head_factors`` as the last training resolved it: "auto" becomes
    the choice summary.json records (metarec.training.selection)."""
    from metarec.models.estimator import resolve_head_factors

    if cfg.model.head_factors != "auto":
        return cfg
    chosen = read_summary(cfg).get("model", {}).get("head_factors")
    if not isinstance(chosen, bool):
        raise ValueError(f"{Path(cfg.train.out_dir) / SUMMARY_FILE} does not record what "
                         "model.head_factors 'auto' chose (trained by an older metarec?): run "
                         "`metarec train` again")
    return dataclasses.replace(cfg, model=resolve_head_factors(cfg.model, chosen))


def warm_start(cfg: Config, model: Estimator, learner: nn.Module, inputs: Inputs
               ) -> dict[str, Any]:
    """Load the champion's meta-parameters into ``model``/``learner`` when
    ``train.init_from`` is "champion" (metarec.training.warmstart); returns the starting point
    as summary.json records it. With no champion yet, training starts afresh and says so."""
    import logging

    if cfg.train.init_from == "none":
        return {"from": "none"}
    from metarec.features.build import load_encoders
    from metarec.training.warmstart import load_champion, transfer

    champion = load_champion(cfg.tracking)
    if champion is None:
        logging.getLogger(__name__).warning(
            "train.init_from is 'champion' but %s has no champion yet: starting afresh",
            cfg.tracking.registered_model)
        return {"from": "none", "reason": "no champion registered yet"}
    counts = transfer(champion, model, learner, load_encoders(cfg.features.out_dir),
                      [int(i) for i in inputs.features.item_ids])
    logging.getLogger(__name__).info("warm start from champion version %d: %s",
                                     champion.version, counts)
    return {"from": "champion", "version": champion.version, "sha256": champion.sha256,
            **counts}


def training_fingerprint(cfg: Config, inputs: Inputs,
                         init: dict[str, Any] | None = None) -> str:
    """Identity of a training run: the task manifest, the model/meta/train settings and the
    starting point (a warm start's champion)."""
    payload = {"tasks": inputs.manifest, "model": asdict(cfg.model), "meta": asdict(cfg.meta),
               "train": {k: v for k, v in asdict(cfg.train).items()
                         if k not in ("device", "progress", "out_dir")}, "seed": cfg.seed}
    if init and init.get("from") == "champion":
        payload["init"] = init["sha256"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def read_summary(cfg: Config) -> dict[str, Any]:
    """summary.json of the last training (what `metarec train` printed, plus its MLflow run)."""
    path = Path(cfg.train.out_dir) / SUMMARY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec train` first")
    return json.loads(path.read_text(encoding="utf-8"))


def train_baseline_models(cfg: Config, inputs: Inputs | None = None) -> dict[str, Any]:
    """Train the global network (the global and finetune baselines); writes its state_dict."""
    from metarec.training.baselines import BASELINES, train_global_network

    inputs = inputs or load_inputs(cfg.features, cfg.tasks)
    _, result = train_global_network(inputs.features, inputs.train, inputs.valid, cfg.model,
                                     cfg.train, cfg.seed,
                                     loss=with_resolved_loss(cfg.meta, cfg.data).loss)
    save_state(Path(cfg.train.out_dir) / GLOBAL_FILE, {"model": result.model_state})
    return {"baselines": list(BASELINES), "global_steps": result.steps,
            "global_valid_mae": result.best_valid_mae}


def load_meta_model(cfg: Config, features: FeatureArrays) -> tuple[Estimator, nn.Module]:
    """The trained estimator (evaluation mode) and learner from meta_model.pt (``auto``
    settings as its training resolved them, :func:`resolved_config`)."""
    model, learner = build_estimator_and_learner(resolved_config(cfg), features)
    state = load_state(Path(cfg.train.out_dir) / META_FILE)
    model.load_state_dict(state["model"])
    learner.load_state_dict(state["learner"])
    return model.eval(), learner


def load_baselines(cfg: Config, inputs: Inputs) -> dict[str, Any]:
    """The baselines by name around the global network of baseline_global.pt."""
    from metarec.models.estimator import build_model
    from metarec.training.baselines import assemble_baselines

    net = build_model(inputs.features, cfg.model)
    net.load_state_dict(load_state(Path(cfg.train.out_dir) / GLOBAL_FILE)["model"])
    return assemble_baselines(net.eval(), inputs.train, len(inputs.features.item_ids),
                              with_resolved_loss(cfg.meta, cfg.data), cfg.train)
