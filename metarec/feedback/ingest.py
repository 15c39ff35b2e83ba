"""`metarec data ingest`: fold the store's events up to a watermark into a new data version.

1. Read the events after the data version's watermark (``data/feedback/watermark.json``) up
   to the store's newest ``seq`` (or ``until``); none: nothing changes.
2. Run the events contract (metarec.feedback.contract): failing events are quarantined with
   their reasons, the rest accepted.
3. Stage the new ``data/`` beside the old one (a copy plus the new events, quarantine and
   watermark), check that it prepares, and hash it (DVC's directory md5).
4. Commit through a journal (``.metarec/ingest.journal.json``, written atomically: the commit
   point): move the old ``data/`` aside, the staged one in, ``dvc add data`` (data.dvc gets the
   new md5), verify, clean up, remove the journal.

Killed before the journal exists, nothing of ``data/`` or ``data.dvc`` has changed (a leftover
staging folder is removed by the next run). Killed after, the next ``ingest``, ``metarec data
fetch``-free retrain (:func:`metarec.pipeline.data.ensure_data`) or :func:`recover` rolls the
commit forward to the new version, which was complete on disk before the journal was written.
So ``data/`` and ``data.dvc`` are seen at the old version or the new one, never a mix, and
running ``ingest`` twice folds nothing twice: the watermark is part of the data version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from metarec.config import Config, DataConfig
from metarec.dvc import DatasetVersionError, dir_md5, read_dvc_file, record_version
from metarec.feedback.fold import (EVENT_COLUMNS, EVENTS_FILE, QUARANTINE_COLUMNS,
                                   QUARANTINE_FILE, WATERMARK_FILE, Watermark, events_csv,
                                   fold_feedback, read_events, read_watermark)
from metarec.io import write_json

log = logging.getLogger(__name__)

JOURNAL = Path(".metarec") / "ingest.journal.json"
Step = Callable[[str], None]


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: the watermark before and after, the events accepted and
    quarantined, the dataset md5 before and after (equal: nothing new)."""

    watermark_before: int
    watermark: int
    accepted: int
    quarantined: int
    md5_before: str
    md5: str
    recovered: str | None = None
    contract: str | None = None

    @property
    def changed(self) -> bool:
        return self.md5 != self.md5_before

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "changed": self.changed}


def _paths(data: DataConfig, root: Path) -> tuple[Path, Path, Path, Path]:
    data_dir = root / data.raw_dir
    return (data_dir, data_dir.with_name(f".{data_dir.name}.ingest"),
            data_dir.with_name(f".{data_dir.name}.ingest-old"), root / JOURNAL)


def _recorded_md5(dvc_file: Path) -> str | None:
    """data.dvc's md5, or None when it is missing or unreadable (a `dvc add` killed while
    writing it): either way the commit records the version again."""
    try:
        return read_dvc_file(dvc_file).md5
    except (OSError, ValueError, DatasetVersionError, yaml.YAMLError):
        return None


def _commit(journal: dict[str, Any], data: DataConfig, root: Path, step: Step) -> None:
    """Roll the journaled commit forward from wherever it stopped; idempotent."""
    data_dir, staging, old, journal_path = _paths(data, root)
    if staging.exists():
        if data_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(data_dir, old)
            step("moved-old")
        os.replace(staging, data_dir)
        step("moved-new")
    elif not data_dir.is_dir() or dir_md5(data_dir) != journal["md5"]:
        raise DatasetVersionError(
            f"{journal_path}: an interrupted ingest to {journal['md5']} cannot be completed: "
            f"its staged data is gone and {data_dir} does not hold it; remove {journal_path} "
            f"and restore {data_dir} with `dvc checkout {data.dvc_file}`")
    if _recorded_md5(root / data.dvc_file) != journal["md5"]:
        recorded = record_version(data_dir, root)
        if recorded.md5 != journal["md5"]:
            raise DatasetVersionError(f"DVC recorded {recorded.md5} for {data_dir}, the "
                                      f"ingest staged {journal['md5']}")
        step("recorded")
    shutil.rmtree(old, ignore_errors=True)
    journal_path.unlink(missing_ok=True)
    step("done")


def recover(data: DataConfig, root: str | Path = ".", step: Step | None = None) -> str | None:
    """Complete an ingest that was interrupted after its commit point; without a journal,
    remove leftover staging folders. Returns what was done, in words (None: nothing)."""
    root = Path(root)
    data_dir, staging, old, journal_path = _paths(data, root)
    if journal_path.exists():
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        _commit(journal, data, root, step or (lambda s: None))
        log.info("completed the interrupted ingest to %s (watermark %s)", journal["md5"],
                 journal["watermark"])
        return f"completed an interrupted ingest to {journal['md5']}"
    left = [p for p in (staging, old) if p.exists()]
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
    return f"removed {', '.join(p.name for p in left)}" if left else None


def _stage(data_dir: Path, staging: Path, folder: str, accepted: pd.DataFrame,
           quarantined: pd.DataFrame, watermark: Watermark) -> None:
    shutil.copytree(data_dir, staging)
    target = staging / folder
    target.mkdir(exist_ok=True)
    previous = read_events(target)
    events = pd.concat([previous, accepted[list(EVENT_COLUMNS)]], ignore_index=True)
    (target / EVENTS_FILE).write_bytes(events_csv(events))
    if len(quarantined) or (target / QUARANTINE_FILE).exists():
        held = pd.concat([read_events(target, QUARANTINE_FILE),
                          quarantined[list(QUARANTINE_COLUMNS)]], ignore_index=True)
        (target / QUARANTINE_FILE).write_bytes(events_csv(held, QUARANTINE_COLUMNS))
    write_json(target / WATERMARK_FILE, watermark.to_dict())


def _require_version(data: DataConfig, root: Path) -> str:
    data_dir, dvc_file = root / data.raw_dir, root / data.dvc_file
    if not dvc_file.exists() or not data_dir.is_dir():
        raise DatasetVersionError(f"{data_dir} or {dvc_file} missing; run `metarec data fetch` "
                                  "first (ingest adds to a dataset version)")
    md5, expected = dir_md5(data_dir), read_dvc_file(dvc_file).md5
    if md5 != expected:
        raise DatasetVersionError(f"{data_dir} hashes to {md5} but {dvc_file} records "
                                  f"{expected}; restore it (`dvc checkout {dvc_file}` or "
                                  "`metarec data fetch`) before ingesting")
    return md5


def ingest(cfg: Config, root: str | Path = ".", store=None, until: int | None = None,
           now: float | None = None, step: Step | None = None) -> IngestResult:
    """Fold the store's events after the data version's watermark (up to ``until``, default
    the newest) into a new version of ``data/`` and ``data.dvc``; see the module docstring.

    ``store``: a :class:`metarec.feedback.store.EventStore` (default: the configured one);
    ``step``: called with the name of each step as it completes (progress, tests).
    """
    from metarec.data.sources import read_source
    from metarec.feedback.contract import check_events, write_contract
    from metarec.feedback.store import EventStore

    root, step = Path(root), step or (lambda s: None)
    now = time.time() if now is None else now
    recovered = recover(cfg.data, root, step)
    md5_before = _require_version(cfg.data, root)
    data_dir, staging, _, journal_path = _paths(cfg.data, root)
    folder = data_dir / cfg.feedback.folder
    mark = read_watermark(folder)
    store = store or EventStore.from_config(cfg.feedback)
    high = store.max_seq() if until is None else min(int(until), store.max_seq())
    if high <= mark.seq:
        log.info("no events after watermark %d in %s: nothing to ingest", mark.seq,
                 store.describe())
        return IngestResult(mark.seq, mark.seq, 0, 0, md5_before, md5_before, recovered)
    batch = store.events(after=mark.seq, upto=high)
    step("read")
    base = read_source(dataclasses.replace(cfg.data, raw_dir=str(data_dir)))
    verdict = check_events(batch, base, read_events(folder), cfg.validation, cfg.feedback, now)
    contract = write_contract(verdict, root / cfg.feedback.out_dir,
                              {"watermark_before": mark.seq, "watermark": high})
    step("checked")
    at = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    entry = {"from_seq": mark.seq + 1, "to_seq": high, "accepted": len(verdict.accepted),
             "quarantined": len(verdict.quarantined), "at": at}
    new_mark = Watermark(high, mark.events + len(verdict.accepted),
                         mark.quarantined + len(verdict.quarantined), (*mark.ingests, entry))
    shutil.rmtree(staging, ignore_errors=True)
    _stage(data_dir, staging, cfg.feedback.folder, verdict.accepted, verdict.quarantined,
           new_mark)
    fold_feedback(base, staging / cfg.feedback.folder)  # the new version must prepare
    md5 = dir_md5(staging)
    step("staged")
    write_json(journal_path, {"md5": md5, "md5_before": md5_before, "watermark": high})
    step("journal")
    _commit({"md5": md5, "watermark": high}, cfg.data, root, step)
    log.info("ingested events %d..%d: %d accepted, %d quarantined; %s now %s",
             mark.seq + 1, high, len(verdict.accepted), len(verdict.quarantined),
             cfg.data.dvc_file, md5)
    return IngestResult(mark.seq, high, len(verdict.accepted), len(verdict.quarantined),
                        md5_before, md5, recovered, str(contract))


def contract_of_version(cfg: Config, root: str | Path = "."):
    """The events contract on every event the current data version holds, against its source
    dataset (the Dagster asset check; an :class:`~metarec.feedback.contract.EventVerdict`)."""
    from metarec.data.sources import read_source
    from metarec.feedback.contract import check_events

    data_dir = Path(root) / cfg.data.raw_dir
    base = read_source(dataclasses.replace(cfg.data, raw_dir=str(data_dir)))
    events = read_events(data_dir / cfg.feedback.folder)
    return check_events(events, base, events.iloc[0:0], cfg.validation, cfg.feedback)


def feedback_lineage(cfg: Config, root: str | Path = ".") -> dict[str, str]:
    """Tags naming the events a dataset version holds (empty when none was ingested): the
    watermark and the counts of folded and quarantined events."""
    mark = read_watermark(Path(root) / cfg.data.raw_dir / cfg.feedback.folder)
    if not mark.seq:
        return {}
    return {"feedback_watermark": str(mark.seq), "feedback_events": str(mark.events),
            "feedback_quarantined": str(mark.quarantined)}
