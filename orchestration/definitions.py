"""The Dagster code location of metarec (`dagster dev` from the repo root loads it through
pyproject.toml's [tool.dagster])."""

from __future__ import annotations

import dagster as dg

from metarec.config import load_config
from orchestration import data_assets, model_assets
from orchestration.automation import build_data_sensor, build_schedule, promote, retrain_job
from orchestration.resources import resources_for_environment


def build_definitions(params: str = "params.yaml") -> dg.Definitions:
    """All assets, checks, jobs, the schedule and the sensor, with environment resources."""
    cfg = load_config(params)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([data_assets, model_assets]),
        asset_checks=dg.load_asset_checks_from_modules([data_assets, model_assets]),
        jobs=[retrain_job, promote],
        schedules=[build_schedule(cfg.schedule)],
        sensors=[build_data_sensor(cfg.schedule, f"{cfg.data.raw_dir}.dvc")],
        resources=resources_for_environment(),
    )


defs = build_definitions()
