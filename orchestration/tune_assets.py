"""The tuning study as an asset, and the `tune` job: data contracts, features and tasks as in
`retrain`, then the Optuna study (metarec.pipeline.tune, the same function as `metarec tune`).
The best trial, its score beside the current settings and the overrides file are the study
asset's metadata; `retrain` never runs it."""

import dataclasses

import dagster as dg

from orchestration.data_assets import cold_start_tasks
from orchestration.resources import ComputeResource, MetarecConfig, MlflowResource

TUNING_GROUP = "tuning"


def _base_config(metarec: MetarecConfig, mlflow: MlflowResource, compute: ComputeResource):
    """The run's params without an earlier study's overrides (what a study starts from), with
    the deployment's tracking URI and device."""
    from metarec.config import load_config

    cfg = load_config(metarec.params, overrides=False)
    if mlflow.tracking_uri:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(
            cfg.tracking, tracking_uri=mlflow.tracking_uri))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=compute.device))


@dg.asset(group_name=TUNING_GROUP, deps=[cold_start_tasks], code_version="1", kinds={"optuna"},
          description="An Optuna study of tune.space, each trial scored by cross-validation over "
                      "the training + validation users (test users never read); the best trial "
                      "is written to tune.overrides_file for review.")
def tuning_study(context: dg.AssetExecutionContext, metarec: MetarecConfig,
                 mlflow: MlflowResource, compute: ComputeResource) -> dg.MaterializeResult:
    from metarec.pipeline.tune import tune_study

    cfg = _base_config(metarec, mlflow, compute)
    outcome = tune_study(cfg)
    report = outcome.report
    for line in report.lines():
        context.log.info(line)
    metadata = {"study": report.study, "storage": outcome.worker.storage,
                "trials": dg.MetadataValue.json(report.counts),
                "report": dg.MetadataValue.md("\n".join(f"    {line}" for line in report.lines())),
                "mlflow_run_id": outcome.mlflow_run_id or ""}
    if report.best is not None:
        metadata.update({
            "best_trial": report.best, f"best_cv_{report.metric}": report.best_value,
            "best_cv_se": report.best_se,
            "best_params": dg.MetadataValue.json(report.best_params),
            "overrides_file": str(outcome.overrides)})
    if report.difference is not None:
        metadata.update({"difference_vs_current": report.difference,
                         "difference_se": report.difference_se})
    return dg.MaterializeResult(metadata=metadata)


tune_job = dg.define_asset_job(
    "tune", selection=dg.AssetSelection.assets(tuning_study).upstream(),
    description="Validate data, rebuild features and tasks, then run the Optuna study and write "
                "the best trial's overrides for review.")
