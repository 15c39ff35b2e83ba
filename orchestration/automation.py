"""Jobs, the weekly retraining schedule and the new-data sensor.

`retrain` materialises the whole asset graph but the tuning study (blocking checks stop what
is downstream of a failure); `tune` (orchestration.tune_assets) runs the study; `promote`
moves the registry alias `champion` through the library function. The schedule's cron and
the sensor's interval come from params.yaml (section `schedule`).
"""


from pathlib import Path

import dagster as dg

from metarec.config import ScheduleConfig
from orchestration.resources import MetarecConfig, MlflowResource, run_config
from orchestration.tune_assets import TUNING_GROUP

# Runs carrying this tag are limited to one at a time by the instance's run queue
# (tag_concurrency_limits in orchestration/deploy/*/dagster.yaml and in the local instance
# that `metarec pipeline run` creates): the workspace's data stages and the GPU are shared.
RETRAIN_TAG = {"metarec/retrain": "workspace"}

# Ingesting feedback is a job of its own: it changes data.dvc, and the new-data sensor then
# starts `retrain` once per new version (a retrain that ingested would be started again).
retrain_job = dg.define_asset_job(
    # Every asset but the tuning study (its own job, `tune`), the item catalog
    # (orchestration/catalog_assets.py: its own job, `add_items`) and the feedback ingest (its
    # own job, `ingest`: it moves data.dvc, and the sensor then starts retrain once per version).
    "retrain", selection=(dg.AssetSelection.all() - dg.AssetSelection.groups(TUNING_GROUP)
                          - dg.AssetSelection.groups("catalog")
                          - dg.AssetSelection.assets("feedback_events")),
    tags=RETRAIN_TAG,
    description="Validate data, rebuild features and tasks, meta-train, evaluate, gate, export "
                "and register a challenger.")
ingest_job = dg.define_asset_job(
    "ingest", selection=dg.AssetSelection.assets("feedback_events"), tags=RETRAIN_TAG,
    description="Fold new feedback events into data/ (a new data.dvc version, events contract "
                "checked, failing events quarantined); the new-data sensor then retrains.")


def build_schedule(cfg: ScheduleConfig) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retrain", job=retrain_job, cron_schedule=cfg.retrain_cron,
        execution_timezone=cfg.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Retrain on cron '{cfg.retrain_cron}' ({cfg.timezone}).")


def build_ingest_schedule(cfg: ScheduleConfig) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="feedback_ingest", job=ingest_job, cron_schedule=cfg.ingest_cron,
        execution_timezone=cfg.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Ingest feedback events on cron '{cfg.ingest_cron}' ({cfg.timezone}).")


def build_data_sensor(cfg: ScheduleConfig, dvc_file: str) -> dg.SensorDefinition:
    """Start `retrain` whenever data.dvc records a new dataset hash (one run per hash)."""

    @dg.sensor(name="new_data_sensor", job=retrain_job,
               minimum_interval_seconds=cfg.sensor_interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts `retrain` when {dvc_file}'s md5 changes.")
    def new_data_sensor(context: dg.SensorEvaluationContext):
        from metarec.dvc import dataset_hash

        path = Path(dvc_file)
        if not path.exists():
            return dg.SkipReason(f"{dvc_file} not found")
        md5 = dataset_hash(path)
        if md5 == context.cursor:
            return dg.SkipReason(f"dataset unchanged ({md5})")
        context.update_cursor(md5)
        return dg.RunRequest(run_key=md5, tags={"metarec/data_hash": md5})

    return new_data_sensor


class PromoteConfig(dg.Config):
    """Which version becomes champion (default: the current challenger)."""

    version: int | None = None
    actor: str = "dagster"


@dg.op(description="Move the `champion` alias (re-checking the stored gate verdict).")
def promote_champion(context: dg.OpExecutionContext, config: PromoteConfig,
                     metarec: MetarecConfig, mlflow: MlflowResource) -> None:
    from metarec.registry import promote

    result = promote(run_config(metarec, mlflow).tracking, version=config.version,
                     actor=config.actor)
    context.log.info(f"champion is now {result}")


@dg.job(description="Promote a registered version to `champion` (the registry's library "
                    "function; same as `metarec promote`).")
def promote() -> None:
    promote_champion()
