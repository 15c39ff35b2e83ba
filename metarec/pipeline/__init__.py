"""The pipeline's stages as library functions, each written once and called by the CLI
(`metarec ...`), the Dagster assets (orchestration/) and Python users alike::

    data        ensure_data            data/ at the version data.dvc records (DVC)
                metarec.data.prepare   -> canonical tables (+ GX contracts: metarec.data.validation)
    features    metarec.features.build -> encoders + language-model item embeddings
    tasks       metarec.data.tasks     -> cold-start splits and few-shot tasks
    train       train_meta_model       -> meta_model.pt   (metarec.training.loop + metarec.meta)
                train_baseline_models  -> baseline_global.pt (metarec.training.baselines)
    evaluate    evaluate_models        -> report.json/md; gate_decision (metarec.evaluation)
    export      export_model           -> model.onnx, scorer.onnx, parity.json (metarec.export)
    register    register_candidate     -> MLflow run + version aliased challenger (metarec.registry)

Modules: :mod:`.data`, :mod:`.inputs` (what the model stages read), :mod:`.train`,
:mod:`.evaluate`, :mod:`.export`, :mod:`.register`, :mod:`.lineage` (dataset and code
versions), :mod:`.ddp` (the torchrun entry point of the train stage), :mod:`.workspace` (one run
at a time per checkout; a pipeline run's own output folders). A stage takes the
:class:`~metarec.config.Config` of the run and hands each library step the section it uses.
"""
