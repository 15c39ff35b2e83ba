"""The item catalog in Dagster: a new catalog version when the new-items file changes.

`item_catalog` is one call into :func:`metarec.catalog.ops.add_items` (the same function as
`metarec items add`) for ``catalog.items_file``, on the model ``serve.model_uri`` names; the
`new_items_sensor` starts the `add_items` job once per content of that file. The catalog is
not part of `retrain`: adding items never retrains, and a retrain never touches a catalog.
"""



import hashlib
from pathlib import Path

import dagster as dg

from metarec.config import CatalogConfig, ScheduleConfig
from orchestration.resources import MetarecConfig, MlflowResource, run_config

CATALOG_GROUP = "catalog"


@dg.asset(group_name=CATALOG_GROUP, code_version="1", kinds={"onnx"},
          description="A new version of the served model's item catalog with the items of "
                      "catalog.items_file (checked by the items contract, embedded by the "
                      "language model, encoded by the model's item encoder); serving picks it "
                      "up without a restart.")
def item_catalog(context: dg.AssetExecutionContext, metarec: MetarecConfig,
                 mlflow: MlflowResource) -> dg.MaterializeResult:
    from metarec.catalog.ops import add_items

    cfg = run_config(metarec, mlflow)
    change = add_items(cfg, cfg.catalog.items_file, cfg.serve.model_uri)
    context.log.info(f"catalog version {change.version}: {len(change.added)} item(s) added")
    meta = {"version": change.version, "added": len(change.added),
            "items": change.catalog["items"], "active": change.catalog["active"],
            "content_hash": change.catalog["content_hash"], "folder": str(change.folder),
            "model": cfg.serve.model_uri}
    if change.mlflow:
        meta.update(mlflow_model_version=change.mlflow["version"],
                    mlflow_run_id=change.mlflow["run_id"], mlflow_path=change.mlflow["path"])
    return dg.MaterializeResult(metadata=meta)


add_items_job = dg.define_asset_job(
    "add_items", selection=dg.AssetSelection.assets(item_catalog),
    description="Add the items of catalog.items_file to the served model's catalog.")


def build_items_sensor(schedule: ScheduleConfig, catalog: CatalogConfig) -> dg.SensorDefinition:
    """Start `add_items` whenever catalog.items_file holds new content (one run per content)."""

    @dg.sensor(name="new_items_sensor", job=add_items_job,
               minimum_interval_seconds=schedule.sensor_interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts `add_items` when {catalog.items_file} changes.")
    def new_items_sensor(context: dg.SensorEvaluationContext):
        path = Path(catalog.items_file)
        if not path.is_file():
            return dg.SkipReason(f"{catalog.items_file} not found")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest == context.cursor:
            return dg.SkipReason(f"{catalog.items_file} unchanged")
        context.update_cursor(digest)
        return dg.RunRequest(run_key=digest, tags={"metarec/items_sha256": digest})

    return new_items_sensor
