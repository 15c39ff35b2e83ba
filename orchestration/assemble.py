"""Assembling the Dagster definitions of metarec for one params file; orchestration.definitions
builds them for the code location (`dagster dev`) and `metarec pipeline run` for its run."""

from __future__ import annotations

import dagster as dg

from metarec.config import default_params_path, load_config
from orchestration import catalog_assets, data_assets, feedback_assets, model_assets, tune_assets
from orchestration.automation import (build_data_sensor, build_ingest_schedule, build_schedule,
                                      ingest_job, promote, retrain_job)
from orchestration.resources import resources_for_environment


def build_definitions(params: str | None = None) -> dg.Definitions:
    """All assets, checks, jobs, the schedule and the sensor, with environment resources.

    ``params`` (default: $METAREC_PARAMS, else params.yaml) configures everything: the
    resources hand that file's configuration to every asset of a run, and the schedule and
    the sensor read theirs from it.
    """
    params = str(default_params_path() if params is None else params)
    cfg = load_config(params)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([data_assets, feedback_assets, model_assets,
                                            tune_assets, catalog_assets]),
        asset_checks=dg.load_asset_checks_from_modules([data_assets, feedback_assets,
                                                        model_assets]),
        jobs=[retrain_job, ingest_job, promote, tune_assets.tune_job,
              catalog_assets.add_items_job],
        schedules=[build_schedule(cfg.schedule), build_ingest_schedule(cfg.schedule)],
        sensors=[build_data_sensor(cfg.schedule, cfg.data.dvc_file),
                 catalog_assets.build_items_sensor(cfg.schedule, cfg.catalog)],
        resources=resources_for_environment(params),
    )

