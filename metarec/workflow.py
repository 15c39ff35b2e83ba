"""The model half of the pipeline as library steps: train, evaluate, export, register.

Each step reads what the previous one wrote (features, tasks, state_dicts, the report) from
the paths in params.yaml, so the Dagster assets, the CLI and a Python user run the same code
in any order of processes. Artifacts:

- ``train.out_dir``: ``meta_model.pt`` (model + learner state_dicts), ``baseline_global.pt``
  (the global network), ``summary.json`` (history, best step, validation MAE);
- ``evaluation.out_dir``: report.json, report.md, plots (metarec.evaluate);
- ``export.out_dir``: model.onnx, scorer.onnx, metadata.json (metarec.export) + parity.json.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from metarec.config import Config
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.io import atomic_dir, write_json

log = logging.getLogger(__name__)

META_FILE = "meta_model.pt"
GLOBAL_FILE = "baseline_global.pt"
SUMMARY_FILE = "summary.json"
PARITY_FILE = "parity.json"
BASELINES = ("user_mean", "item_mean", "global", "finetune")


@dataclass
class Inputs:
    """Features and task sets as the feature/task steps wrote them."""

    features: FeatureArrays
    sets: dict[str, TaskArrays]
    training: tuple[str, ...]
    validation: tuple[str, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> TaskArrays:
        return _concat([self.sets[n] for n in self.training])

    @property
    def valid(self) -> TaskArrays:
        return _concat([self.sets[n] for n in self.validation])

    @property
    def scenarios(self) -> list[str]:
        """Evaluation sets: every base set that is neither training nor validation."""
        skip = set(self.training) | set(self.validation)
        return sorted(n for n in self.sets if "@" not in n and n not in skip)


def _concat(parts: list[TaskArrays]) -> TaskArrays:
    if len(parts) == 1:
        return parts[0]
    return TaskArrays(**{k: np.concatenate([getattr(p, k) for p in parts])
                         for k in parts[0].__dict__})


def load_inputs(cfg: Config) -> Inputs:
    """Read features.out_dir and tasks.out_dir (built by `metarec features/tasks build`)."""
    from metarec.data.tasks import MANIFEST_FILE, load_tasks
    from metarec.features.build import load_features

    manifest = json.loads((Path(cfg.tasks.out_dir) / MANIFEST_FILE).read_text())
    return Inputs(load_features(cfg.features.out_dir), load_tasks(cfg.tasks.out_dir),
                  tuple(manifest["training"]), tuple(manifest["validation"]), manifest)


# --------------------------------------------------------------------------- training


def _build(cfg: Config, features: FeatureArrays):
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(features, cfg.model)
    return model, build_learner(model, cfg.meta)


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    from metarec.io import atomic_file

    with atomic_file(path, "wb") as fh:
        torch.save(payload, fh)


def train_meta_model(cfg: Config, inputs: Inputs | None = None,
                     callbacks: tuple[Callable[[int, dict[str, float]], None], ...] = (),
                     resume: bool = True, track: bool = True,
                     dagster_run_id: str | None = None, world=None) -> dict[str, Any]:
    """Meta-train the configured learner; writes meta_model.pt and summary.json.

    With ``track``, the training is recorded as an MLflow run (params, per-step metrics, the
    checkpoint, lineage tags) whose id lands in summary.json; registration completes that run.
    """
    from metarec.train import meta_train

    inputs = inputs or load_inputs(cfg)
    out = Path(cfg.train.out_dir)
    model, learner = _build(cfg, inputs.features)
    # Resume only a checkpoint of this very training: same tasks, model, learner and loop.
    result = meta_train(model, learner, inputs.train, inputs.valid, cfg.train, cfg.seed,
                        callbacks=callbacks, resume=resume,
                        checkpoint_dir=out / "checkpoints" / training_fingerprint(cfg, inputs),
                        world=world)
    if world is not None and not world.is_main:  # DDP: only rank 0 writes and logs
        return {"learner": cfg.meta.learner, "steps": result.steps,
                "best_step": result.best_step, "best_valid_mae": result.best_valid_mae}
    _save_state(out / META_FILE, {"model": result.model_state, "learner": result.learner_state})
    summary = {"learner": cfg.meta.learner, "steps": result.steps, "best_step": result.best_step,
               "best_valid_mae": result.best_valid_mae, "stopped_early": result.stopped_early,
               "train_tasks": len(inputs.train), "valid_tasks": len(inputs.valid),
               "history": result.history}
    if track:
        from metarec import registry

        summary["mlflow_run_id"] = registry.log_training_run(
            cfg.tracking, params=cfg.to_dict(), epoch_metrics=result.history,
            artifacts={"checkpoint": out / META_FILE}, data_hash=dataset_hash_or_none(cfg),
            git_sha=git_sha(), dagster_run_id=dagster_run_id)
        summary["mlflow_run_url"] = registry.run_url(cfg.tracking, summary["mlflow_run_id"])
    write_json(out / SUMMARY_FILE, summary)
    return summary


def training_fingerprint(cfg: Config, inputs: Inputs) -> str:
    """Identity of a training run: the task manifest and the model/meta/train settings."""
    import hashlib
    from dataclasses import asdict

    payload = {"tasks": inputs.manifest, "model": asdict(cfg.model), "meta": asdict(cfg.meta),
               "train": {k: v for k, v in asdict(cfg.train).items()
                         if k not in ("device", "progress", "out_dir")}, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def dataset_hash_or_none(cfg: Config) -> str | None:
    """data.dvc's md5 when the file exists (lineage tag), else None."""
    from metarec.dvc import dataset_hash

    path = Path(f"{cfg.data.raw_dir}.dvc")
    return dataset_hash(path) if path.exists() else None


def train_baseline_models(cfg: Config, inputs: Inputs | None = None) -> dict[str, Any]:
    """Train the global network (the global and finetune baselines); writes its state_dict."""
    from metarec.meta.baselines import train_baselines

    inputs = inputs or load_inputs(cfg)
    _, result = train_baselines(inputs.features, inputs.train, inputs.valid, cfg.model,
                                cfg.meta, cfg.train, cfg.seed)
    _save_state(Path(cfg.train.out_dir) / GLOBAL_FILE, {"model": result.model_state})
    return {"baselines": list(BASELINES), "global_steps": result.steps,
            "global_valid_mae": result.best_valid_mae}


def load_meta_model(cfg: Config, features: FeatureArrays):
    """The trained estimator and learner (state_dicts loaded with weights_only)."""
    model, learner = _build(cfg, features)
    state = torch.load(Path(cfg.train.out_dir) / META_FILE, map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state["model"])
    learner.load_state_dict(state["learner"])
    return model.eval(), learner


def load_baselines(cfg: Config, inputs: Inputs) -> dict[str, Any]:
    """The four baselines by name, the global network from baseline_global.pt."""
    from metarec.meta.baselines import (ItemMeanBaseline, NetworkBaseline, UserMeanBaseline,
                                        task_ratings)
    from metarec.meta.learners import GlobalLearner, GradientLearner
    from metarec.models.estimator import build_model

    items, ratings = task_ratings(inputs.train)
    item_mean = ItemMeanBaseline.fit(items, ratings, len(inputs.features.item_ids),
                                     cfg.meta.item_mean_shrinkage)
    net = build_model(inputs.features, cfg.model)
    net.load_state_dict(torch.load(Path(cfg.train.out_dir) / GLOBAL_FILE, map_location="cpu",
                                   weights_only=True)["model"])
    net.eval()
    finetune = GradientLearner(net, adapted="all", steps=cfg.meta.finetune_steps,
                               lr=cfg.meta.finetune_lr, first_order=True, learn_lr=False)
    return {"user_mean": UserMeanBaseline(global_mean=item_mean.global_mean),
            "item_mean": item_mean,
            "global": NetworkBaseline(net, GlobalLearner(), cfg.train),
            "finetune": NetworkBaseline(net, finetune, cfg.train)}


# --------------------------------------------------------------------------- evaluation


def evaluate_models(cfg: Config, inputs: Inputs | None = None):
    """Candidate and baselines on every evaluation scenario, curves included; writes the
    report into evaluation.out_dir and returns it (a metarec.evaluate.Report)."""
    from metarec.evaluate import evaluate_all, write_report
    from metarec.train import predict

    inputs = inputs or load_inputs(cfg)
    model, learner = load_meta_model(cfg, inputs.features)
    methods: dict[str, Callable[[TaskArrays], np.ndarray]] = {
        cfg.meta.learner: lambda t: predict(model, learner, t, cfg.train)}
    methods.update({n: b.predict for n, b in load_baselines(cfg, inputs).items()})
    report = evaluate_all(methods, {s: inputs.sets[s] for s in inputs.scenarios},
                          cfg.meta.learner, cfg.evaluation, cfg.seed)
    write_report(report, cfg.evaluation.out_dir, cfg.evaluation.plot_metrics)
    return report


def load_report(cfg: Config):
    from metarec.evaluate import Report

    path = Path(cfg.evaluation.out_dir) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run the evaluation first")
    return Report.from_dict(json.loads(path.read_text()))


def gate_decision(cfg: Config, report=None):
    """The gate verdict of the current report against the registry's champion."""
    from metarec.gate import gate
    from metarec.registry import champion_report

    report = report or load_report(cfg)
    return gate(report, champion_report(cfg.tracking), cfg.gate)


# --------------------------------------------------------------------------- export


def export_model(cfg: Config, inputs: Inputs | None = None, lineage: dict[str, Any] | None = None):
    """ONNX export (adaptation inside the graph) + parity check; returns (ExportResult,
    ParityReport). parity.json is written beside the graphs."""
    from metarec.export import export_onnx, parity_check
    from metarec.features.build import load_encoders
    from metarec.data.tables import read_tables

    inputs = inputs or load_inputs(cfg)
    model, learner = load_meta_model(cfg, inputs.features)
    adaptation = learner.adaptation()
    items = read_tables(cfg.data.prepared_dir).items
    encoders = load_encoders(cfg.features.out_dir).to_dict()
    rating_range = ((0.0, 1.0) if cfg.validation.implicit
                    else (cfg.validation.rating_min, cfg.validation.rating_max))
    result = export_onnx(model, adaptation, inputs.features, cfg.export.out_dir,
                         opset=cfg.export.opset, user_encoders=encoders["user"],
                         titles=dict(zip(items.item_id.tolist(), items.title.tolist())),
                         rating_range=rating_range, extra=lineage or {})
    parity = parity_check(model, result, adaptation, n_tasks=cfg.export.parity_tasks,
                          tol=cfg.export.parity_tol, seed=cfg.seed)
    write_json(Path(cfg.export.out_dir) / PARITY_FILE, parity_dict(parity))
    return result, parity


def parity_dict(parity) -> dict[str, Any]:
    return {"max_abs_err": parity.max_abs_err, "scorer_max_abs_err": parity.scorer_max_abs_err,
            "tol": parity.tol, "n_tasks": parity.n_tasks, "passed": parity.passed}


# --------------------------------------------------------------------------- registry


def git_sha(root: str | Path = ".") -> str | None:
    """The code version: HEAD's sha (with "-dirty" when the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def register_model(cfg: Config, decision, *, data_hash: str | None,
                   dagster_run_id: str | None = None, parity_passed: bool = True
                   ) -> dict[str, Any]:
    """Log the training run to MLflow and, only if the gate and parity passed, register the
    exported model as a version aliased `challenger`. Returns run id, version (or None)."""
    from metarec import registry

    if not parity_passed:
        raise RuntimeError("ONNX parity check failed: nothing registered")
    report = load_report(cfg)
    summary = json.loads((Path(cfg.train.out_dir) / SUMMARY_FILE).read_text())
    sha = git_sha()
    opened = summary.get("mlflow_run_id")  # the run the training step opened, if any
    run_id = registry.log_training_run(
        cfg.tracking, params=cfg.to_dict(),
        epoch_metrics=[] if opened else summary.get("history", []),
        report=report, report_dir=cfg.evaluation.out_dir, decision=decision,
        artifacts={"encoders": Path(cfg.features.out_dir) / "encoders.json",
                   **({} if opened else {"checkpoint": Path(cfg.train.out_dir) / META_FILE})},
        data_hash=data_hash, git_sha=sha, dagster_run_id=dagster_run_id, run_id=opened)
    version = registry.register_if_passed(
        cfg.tracking, run_id, cfg.export.out_dir, decision, report=report,
        key_metric_names=cfg.gate.metrics, data_hash=data_hash, git_sha=sha,
        dagster_run_id=dagster_run_id, auto_promote=cfg.gate.auto_promote)
    return {"run_id": run_id, "version": version, "passed": decision.passed}
