"""Dagster resources: typed handles on the configuration, DVC, MLflow and the compute device.

Each resource is a thin pydantic boundary around the library: it turns Dagster config into the
library's typed objects and does nothing else. ``local_resources()`` are the embedded defaults
(one machine); ``production_resources()`` read their settings from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from metarec.config import Config, DataConfig, default_params_path, load_config


class MetarecConfig(dg.ConfigurableResource):
    """Which params file the run uses (the one `metarec --params` named, $METAREC_PARAMS in
    production). It is read once per run, when the resource is set up, and every asset of the
    run gets that same :class:`Config`. Paths inside it are relative to the working directory,
    the repo root (where `dagster dev` and `metarec pipeline run` start)."""

    params: str = "params.yaml"
    _config: Config | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._config = load_config(self.params)

    def load(self) -> Config:
        """The run's configuration (loaded at set-up; loaded now outside a run)."""
        if self._config is None:
            self._config = load_config(self.params)
        return self._config


class DvcResource(dg.ConfigurableResource):
    """The DVC repository holding the dataset's .dvc file (``data.dvc_file`` of the params);
    steps using it run in the `dvc` pool, size one."""

    root: str = "."

    def dvc_path(self, data_cfg: DataConfig) -> Path:
        return Path(self.root) / data_cfg.dvc_file

    def dataset_hash(self, data_cfg: DataConfig) -> str:
        from metarec.dvc import dataset_hash

        return dataset_hash(self.dvc_path(data_cfg))

    def record_stage(self, stage: str, cfg: Config) -> str:
        """Record the dvc.yaml stage this asset just built in dvc.lock (`dvc commit`), so
        `dvc status` is clean after a pipeline run (see metarec.dvc.record_stage)."""
        from metarec.dvc import record_stage

        return record_stage(stage, cfg, self.root)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry; empty tracking_uri: MLFLOW_TRACKING_URI, else params.yaml."""

    tracking_uri: str = ""

    def uri(self, cfg: Config) -> str:
        from metarec.registry import tracking_uri

        return self.tracking_uri or tracking_uri(cfg.tracking)


class ComputeResource(dg.ConfigurableResource):
    """Training device: "auto" picks CUDA when a GPU is visible, else the CPU."""

    device: str = "auto"


def run_key(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    """The folder key of a run's own outputs: its root run's id, so that a re-execution
    (from failure) reads what the steps it does not rerun wrote."""
    return context.run.root_run_id or context.run.run_id


def run_config(metarec: MetarecConfig, mlflow: MlflowResource | None = None,
               compute: ComputeResource | None = None, key: str | None = None) -> Config:
    """The run's configuration with the deployment's overrides applied: the MLflow resource's
    tracking URI (when set), the compute resource's training device and, with ``key``
    (:func:`run_key`), the model stages' outputs in that run's own folders."""
    import dataclasses

    from metarec.pipeline.workspace import run_outputs

    cfg = metarec.load()
    if key is not None:
        cfg = run_outputs(cfg, key)
    if mlflow is not None and mlflow.tracking_uri:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(
            cfg.tracking, tracking_uri=mlflow.tracking_uri))
    if compute is not None and compute.device != cfg.train.device:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=compute.device))
    return cfg


def local_resources(root: str = ".", params: str | None = None) -> dict[str, object]:
    """Embedded defaults: this repo, MLflow on SQLite, DVC's local cache, auto device;
    ``params``: the params file (default: $METAREC_PARAMS, else params.yaml)."""
    params = str(default_params_path() if params is None else params)
    return {"metarec": MetarecConfig(params=params), "dvc": DvcResource(root=root),
            "mlflow": MlflowResource(), "compute": ComputeResource()}


def production_resources(params: str | None = None) -> dict[str, object]:
    """Settings from the environment (METAREC_ROOT, METAREC_PARAMS, MLFLOW_TRACKING_URI,
    METAREC_DEVICE); run workers need the repo checked out at METAREC_ROOT."""
    root = os.environ.get("METAREC_ROOT", ".")
    params = str(default_params_path() if params is None else params)
    return {"metarec": MetarecConfig(params=params),
            "dvc": DvcResource(root=root),
            "mlflow": MlflowResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")),
            "compute": ComputeResource(device=os.environ.get("METAREC_DEVICE", "cuda"))}


def resources_for_environment(params: str | None = None) -> dict[str, object]:
    """METAREC_ENV=production selects production_resources(), anything else the local ones;
    either way the resources load ``params`` (default: $METAREC_PARAMS, else params.yaml)."""
    if os.environ.get("METAREC_ENV", "local") == "production":
        return production_resources(params)
    return local_resources(params=params)
