"""Dagster resources: typed handles on the configuration, DVC, MLflow and the compute device.

Each resource is a thin pydantic boundary around the library: it turns Dagster config into the
library's typed objects and does nothing else. ``local_resources()`` are the embedded defaults
(one machine); ``production_resources()`` read their settings from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from metarec.config import Config, load_config


class MetarecConfig(dg.ConfigurableResource):
    """Which params.yaml to load. Paths inside it are relative to the working directory, the
    repo root (where `dagster dev` and `metarec pipeline run` start)."""

    params: str = "params.yaml"

    def load(self) -> Config:
        return load_config(self.params)


class DvcResource(dg.ConfigurableResource):
    """The DVC repository holding data.dvc (steps using it run in the `dvc` pool, size one)."""

    root: str = "."
    dvc_file: str = "data.dvc"

    def dataset_hash(self) -> str:
        from metarec.dvc import dataset_hash

        return dataset_hash(Path(self.root) / self.dvc_file)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry; empty tracking_uri: MLFLOW_TRACKING_URI, else params.yaml."""

    tracking_uri: str = ""

    def uri(self, cfg: Config) -> str:
        from metarec.registry import tracking_uri

        return self.tracking_uri or tracking_uri(cfg.tracking)


class ComputeResource(dg.ConfigurableResource):
    """Training device: "auto" picks CUDA when a GPU is visible, else the CPU."""

    device: str = "auto"


def local_resources(root: str = ".", params: str = "params.yaml") -> dict[str, object]:
    """Embedded defaults: this repo, MLflow on SQLite, DVC's local cache, auto device."""
    return {"metarec": MetarecConfig(params=params), "dvc": DvcResource(root=root),
            "mlflow": MlflowResource(), "compute": ComputeResource()}


def production_resources() -> dict[str, object]:
    """Settings from the environment (METAREC_ROOT, METAREC_PARAMS, MLFLOW_TRACKING_URI,
    METAREC_DEVICE); run workers need the repo checked out at METAREC_ROOT."""
    root = os.environ.get("METAREC_ROOT", ".")
    return {"metarec": MetarecConfig(params=os.environ.get("METAREC_PARAMS", "params.yaml")),
            "dvc": DvcResource(root=root),
            "mlflow": MlflowResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")),
            "compute": ComputeResource(device=os.environ.get("METAREC_DEVICE", "cuda"))}


def resources_for_environment() -> dict[str, object]:
    """METAREC_ENV=production selects production_resources(), anything else the local ones."""
    if os.environ.get("METAREC_ENV", "local") == "production":
        return production_resources()
    return local_resources()
