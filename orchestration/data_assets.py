"""Data assets: the DVC-versioned raw dataset, canonical tables with their GX contracts,
item text embeddings, features and cold-start tasks. Each asset is one library call."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.resources import DvcResource, MetarecConfig

DATA_GROUP = "data"
FEATURE_GROUP = "features"
TABLES = ("interactions", "users", "items")


@dg.asset(group_name=DATA_GROUP, pool="dvc", code_version="1", kinds={"dvc"},
          deps=["feedback_events"],
          description="The raw dataset in data/, at the version data.dvc records (fetched when "
                      "missing). Its data version is the DVC md5, carried by everything downstream.")
def raw_dataset(metarec: MetarecConfig, dvc: DvcResource) -> dg.MaterializeResult:
    from metarec.pipeline.data import ensure_data

    cfg = metarec.load()
    detail = ensure_data(cfg.data, Path(dvc.root))
    md5 = dvc.dataset_hash(cfg.data)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(md5),
        metadata={"dvc_md5": md5, "dataset": cfg.data.dataset, "path": cfg.data.raw_dir,
                  "detail": detail})


@dg.multi_asset(
    specs=[dg.AssetSpec(name, group_name=DATA_GROUP, deps=[raw_dataset], kinds={"parquet"},
                        code_version="1",
                        description=f"Canonical {name} table (Parquet), checked by its GX suite.")
           for name in TABLES],
    name="canonical_tables", pool="dvc")
def canonical_tables(metarec: MetarecConfig, dvc: DvcResource):
    """Raw files -> canonical Parquet tables (`metarec data prepare`, dvc.yaml stage
    `prepare`, recorded in dvc.lock)."""
    from metarec.data.prepare import prepare_dataset
    from metarec.data.tables import frame_hash

    cfg = metarec.load()
    tables = prepare_dataset(cfg.data, feedback_folder=cfg.feedback.folder)
    lock = dvc.record_stage("prepare", cfg)
    for name in TABLES:
        frame = getattr(tables, name)
        yield dg.MaterializeResult(
            asset_key=name, data_version=dg.DataVersion(frame_hash(frame)),
            metadata={"rows": len(frame), "columns": list(map(str, frame.columns)),
                      "path": f"{cfg.data.prepared_dir}/{name}.parquet", "dvc_lock": lock,
                      "preview": dg.MetadataValue.md(frame.head(5).to_markdown(index=False))})


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec("data_contract", asset=name, blocking=True,
                             description="Great Expectations suite of this table")
           for name in TABLES],
    name="data_contracts")
def data_contracts(metarec: MetarecConfig):
    """Run the GX suites once over the three tables; each table's failures block downstream."""
    from metarec.data.tables import read_tables
    from metarec.data.validation import validate_tables

    cfg = metarec.load()
    report = validate_tables(read_tables(cfg.data.prepared_dir), cfg.validation, cfg.tasks,
                             artifact_dir=cfg.validation.out_dir)
    for name in TABLES:
        failures = [f for f in report.failures if f.table == name]
        # Each line names the table, the expectation, its column and how many rows failed, so
        # `metarec pipeline run` can say what broke, not only that the check failed.
        lines = [f"{f.table}: {f.expectation} ({f.column or 'table'})"
                 + ("" if f.failing_count is None else f", {f.failing_count} rows failing")
                 + f": {f.message}" for f in failures]
        yield dg.AssetCheckResult(
            asset_key=name, check_name="data_contract", passed=not failures,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"failures": len(failures),
                      "report": dg.MetadataValue.md(
                          "\n".join(f"- {line}" for line in lines) or "all expectations met")})


@dg.asset(group_name=FEATURE_GROUP, deps=list(TABLES), code_version="1", kinds={"pytorch"},
          description="Language-model embeddings of every item's text, cached by (model, text).")
def item_text_embeddings(metarec: MetarecConfig) -> dg.MaterializeResult:
    from metarec.data.tables import read_tables
    from metarec.features.build import item_texts
    from metarec.features.text import embed_texts

    cfg = metarec.load()
    f = cfg.features
    texts = item_texts(read_tables(cfg.data.prepared_dir).items)
    vectors = embed_texts(texts, f.text_model, f.cache_dir, f.text_batch_size, f.text_device,
                          f.text_normalize)
    return dg.MaterializeResult(metadata={"model": f.text_model, "items": len(texts),
                                          "dim": int(vectors.shape[1]), "cache": f.cache_dir})


@dg.asset(group_name=FEATURE_GROUP, deps=[item_text_embeddings], code_version="1", pool="dvc",
          description="Encoders fitted on training users/items and the encoded feature arrays.")
def features(metarec: MetarecConfig, dvc: DvcResource) -> dg.MaterializeResult:
    from metarec.data.tables import read_tables
    from metarec.features.build import prepare_features, read_features_manifest

    cfg = metarec.load()
    feats = prepare_features(cfg.features, cfg.tasks, cfg.seed,
                             read_tables(cfg.data.prepared_dir), data=cfg.data)
    manifest = read_features_manifest(cfg.features.out_dir)
    version = f"{manifest.get('data_hash', '')[:12]}-{manifest.get('encoder_hash', '')[:12]}"
    lock = dvc.record_stage("features", cfg)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dvc_lock": lock,
        "users": len(feats.user_ids), "items": len(feats.item_ids),
        "user_fields": list(feats.user_fields), "item_fields": list(feats.item_fields),
        "text_dim": 0 if feats.item_text is None else int(feats.item_text.shape[1]),
        "encoder_hash": manifest.get("encoder_hash", ""), "path": cfg.features.out_dir})


@dg.asset(group_name=FEATURE_GROUP, deps=[features], code_version="1", pool="dvc",
          description="Few-shot tasks per cold-start scenario, padded with masks.")
def cold_start_tasks(metarec: MetarecConfig, dvc: DvcResource) -> dg.MaterializeResult:
    import hashlib
    from pathlib import Path

    from metarec.data.tables import read_tables
    from metarec.data.tasks import MANIFEST_FILE
    from metarec.pipeline.tasks import build_task_sets

    cfg = metarec.load()
    sets = build_task_sets(cfg, read_tables(cfg.data.prepared_dir))
    counts = {name: len(t) for name, t in sets.items() if "@" not in name}
    manifest = (Path(cfg.tasks.out_dir) / MANIFEST_FILE).read_bytes()
    lock = dvc.record_stage("tasks", cfg)
    return dg.MaterializeResult(data_version=dg.DataVersion(
        hashlib.sha256(manifest).hexdigest()[:16]), metadata={
            "protocol": cfg.tasks.protocol, **counts, "path": cfg.tasks.out_dir,
            "dvc_lock": lock})
