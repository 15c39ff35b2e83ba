"""Feedback assets: the store's events folded into a new data version (upstream of
`raw_dataset`), with the events' own GX contract as a blocking check. One library call each."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.resources import DvcResource, MetarecConfig

FEEDBACK_ASSET = "feedback_events"


@dg.asset(name=FEEDBACK_ASSET, group_name="data", pool="dvc", code_version="1",
          kinds={"dvc", "sqlite"},
          description="Rating events from the event store, folded up to a watermark into data/ "
                      "(a new data.dvc version: `metarec data ingest`); events that break the "
                      "contract are quarantined with their reasons. The new-data sensor then "
                      "starts `retrain`.")
def feedback_events(metarec: MetarecConfig, dvc: DvcResource) -> dg.MaterializeResult:
    from metarec.feedback.ingest import ingest

    cfg = metarec.load()
    res = ingest(cfg, root=Path(dvc.root))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(res.md5),
        metadata={"watermark": res.watermark, "watermark_before": res.watermark_before,
                  "accepted": res.accepted, "quarantined": res.quarantined,
                  "dvc_md5": res.md5, "changed": res.changed,
                  "quarantine": f"{cfg.data.raw_dir}/{cfg.feedback.folder}/quarantine.csv",
                  "contract": res.contract or "-", "recovered": res.recovered or "-"})


@dg.asset_check(asset=FEEDBACK_ASSET, name="events_contract", blocking=True,
                description="The events contract (GX) on every event the data version holds")
def events_contract(metarec: MetarecConfig, dvc: DvcResource) -> dg.AssetCheckResult:
    from metarec.feedback.ingest import contract_of_version

    cfg = metarec.load()
    verdict = contract_of_version(cfg, Path(dvc.root))
    return dg.AssetCheckResult(
        passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"events": len(verdict.accepted) + len(verdict.quarantined),
                  "failing": len(verdict.quarantined),
                  "report": dg.MetadataValue.md("\n".join(
                      f"- {line.strip()}" for line in verdict.to_text().splitlines()))})
