"""Model assets: meta-training, baselines, evaluation with its gate, ONNX export with its parity
check, and the registered MLflow version. Each asset is one call into a stage of
metarec.pipeline (the same functions the CLI calls), on the run's configuration with its
outputs in folders of the run's own (``artifacts/runs/<run id>/...``: run_config with run_key),
so concurrent runs never read each other's summary, report or export."""



import dagster as dg

from orchestration.data_assets import cold_start_tasks
from orchestration.resources import (ComputeResource, DvcResource, MetarecConfig, MlflowResource,
                                     run_config, run_key)

MODEL_GROUP = "model"


@dg.asset(group_name=MODEL_GROUP, deps=[cold_start_tasks], code_version="1",
          kinds={"pytorch"}, description="The meta-learned estimator (state_dicts), trained on the "
                                         "training tasks with early stopping on validation tasks.",
          # Under the k8s_job_executor (orchestration/deploy) this step's pod asks for one GPU.
          op_tags={"dagster-k8s/config": {"container_config": {
              "resources": {"limits": {"nvidia.com/gpu": 1}}}}})
def meta_model(context: dg.AssetExecutionContext, metarec: MetarecConfig,
               compute: ComputeResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    from pathlib import Path

    from metarec.pipeline.train import train_meta_model
    from metarec.training.loop import resolve_device

    cfg = run_config(metarec, mlflow, compute, run_key(context))

    def log_metrics(step: int, metrics: dict[str, float]) -> None:
        if any(k.startswith("valid") for k in metrics):  # validations only, not every step
            context.log.info(f"step {step}: {metrics}")

    # Checkpoints stay in the shared train folder (keyed by the training's fingerprint), so a
    # new run of the same training resumes.
    summary = train_meta_model(cfg, callbacks=(log_metrics,), dagster_run_id=context.run_id,
                               checkpoint_root=Path(metarec.load().train.out_dir) / "checkpoints")
    return dg.MaterializeResult(metadata={
        "learner": summary["learner"], "device": str(resolve_device(cfg.train.device)),
        "steps": summary["steps"], "best_step": summary["best_step"],
        "best_valid_mae": float(summary["best_valid_mae"]),
        "valid_error": summary.get("valid_error", "MAE"),  # what best_valid_mae measures
        "train_tasks": summary["train_tasks"], "valid_tasks": summary["valid_tasks"],
        **({"prior_shift": float(summary["prior_shift"])}
           if summary.get("prior_shift") is not None else {}),
        "head_factors": bool(summary["model"]["head_factors"]),
        **({"head_factors_choice": dg.MetadataValue.json(summary["head_factors_choice"])}
           if summary.get("head_factors_choice") else {}),
        "mlflow_run_id": summary["mlflow_run_id"], "mlflow_run_url": summary["mlflow_run_url"],
        "path": cfg.train.out_dir})


@dg.asset(group_name=MODEL_GROUP, deps=[cold_start_tasks], code_version="1", kinds={"pytorch"},
          description="Baselines reported beside the learner: user mean, item mean, the same "
                      "network trained globally, and global + fine-tuning.")
def baseline_models(context: dg.AssetExecutionContext, metarec: MetarecConfig,
                    compute: ComputeResource) -> dg.MaterializeResult:
    from metarec.pipeline.train import train_baseline_models

    result = train_baseline_models(run_config(metarec, compute=compute, key=run_key(context)))
    return dg.MaterializeResult(metadata={**result, "baselines": ", ".join(result["baselines"])})


@dg.asset(group_name=MODEL_GROUP, deps=[meta_model, baseline_models], code_version="1",
          description="Metrics per scenario and method, adaptation curves, bootstrap intervals.")
def evaluation_report(context: dg.AssetExecutionContext,
                      metarec: MetarecConfig) -> dg.MaterializeResult:
    from metarec.pipeline.evaluate import evaluate_models

    cfg = run_config(metarec, key=run_key(context))
    report = evaluate_models(cfg)
    headline = {f"{s}/{m}": round(float(v), 4) for s, by in report.metrics.items()
                for m, v in by[report.candidate].items() if m in cfg.gate.metrics}
    return dg.MaterializeResult(metadata={
        **headline, "report": dg.MetadataValue.md(report.to_markdown()),
        "meta_training_gain": str(report.meta_training_gain).lower(),
        "path": cfg.evaluation.out_dir})


@dg.asset_check(asset=evaluation_report, blocking=True, name="gate",
                description="The candidate holds against every baseline at every gated "
                            "support size (gate.rule), does not regress the champion beyond "
                            "the margin, and meta-training beat its start, per scenario.")
def gate_check(context: dg.AssetCheckExecutionContext, metarec: MetarecConfig,
               mlflow: MlflowResource) -> dg.AssetCheckResult:
    from metarec.pipeline.evaluate import gate_decision

    cfg = run_config(metarec, mlflow, key=run_key(context))
    decision = gate_decision(cfg)
    return dg.AssetCheckResult(
        passed=decision.passed,
        metadata={"reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
                  "rule": cfg.gate.rule, "checks": len(decision.checks),
                  "failed_checks": sum(not c.passed for c in decision.checks)})


@dg.asset(group_name=MODEL_GROUP, deps=[evaluation_report], code_version="1", kinds={"onnx"},
          description="model.onnx (inner-loop adaptation inside the graph) and scorer.onnx.")
def onnx_model(context: dg.AssetExecutionContext, metarec: MetarecConfig,
               dvc: DvcResource) -> dg.MaterializeResult:
    from metarec.pipeline.export import export_model

    cfg = run_config(metarec, key=run_key(context))
    result, parity = export_model(cfg, lineage={"data_hash": dvc.dataset_hash(cfg.data)})
    return dg.MaterializeResult(metadata={
        "path": str(result.out_dir), "parity_max_abs_err": float(parity.max_abs_err),
        "parity_passed": parity.passed, "model_bytes": result.model_path.stat().st_size})


@dg.asset_check(asset=onnx_model, blocking=True, name="parity",
                description="ONNX Runtime matches PyTorch adapt + score within export.parity_tol.")
def parity_check(context: dg.AssetCheckExecutionContext,
                 metarec: MetarecConfig) -> dg.AssetCheckResult:
    from metarec.pipeline.export import read_parity

    parity = read_parity(run_config(metarec, key=run_key(context)).export)
    return dg.AssetCheckResult(passed=bool(parity["passed"]), metadata=parity)


@dg.asset(group_name=MODEL_GROUP, deps=[onnx_model], code_version="1", kinds={"mlflow"},
          description="The MLflow model version (alias `challenger`) of this run, created only "
                      "when the gate and the parity check passed.")
def registered_model(context: dg.AssetExecutionContext, metarec: MetarecConfig,
                     dvc: DvcResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    from metarec.feedback.ingest import feedback_lineage
    from metarec.pipeline.register import register_candidate

    cfg = run_config(metarec, mlflow, key=run_key(context))
    data_hash = dvc.dataset_hash(cfg.data)
    done = register_candidate(cfg, data_hash=data_hash, dagster_run_id=context.run_id)
    if not done.registered:  # the champion changed since the gate check: refused now
        raise dg.Failure("gate failed; nothing registered:\n" + "\n".join(done.decision.reasons))
    return dg.MaterializeResult(metadata={
        "version": done.version, "alias": "challenger", "mlflow_run_id": done.run_id,
        "tracking_uri": mlflow.uri(cfg), "model_uri": f"models:/{cfg.tracking.registered_model}/"
                                                      f"{done.version}",
        "data_hash": data_hash, "dagster_run_id": context.run_id,
        **feedback_lineage(cfg, dvc.root)})
