"""`metarec data prepare`: raw dataset -> canonical Parquet tables (the first dvc.yaml stage)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from metarec.config import DataConfig
from metarec.data.sources import read_source
from metarec.data.tables import CanonicalTables, write_tables

log = logging.getLogger(__name__)


def prepare_dataset(data: DataConfig, root: str | Path = ".",
                    feedback_folder: str = "feedback") -> CanonicalTables:
    """Read ``data.dataset`` from the data directory and write its canonical tables.

    Feedback events ingested into the data directory (``metarec data ingest``:
    ``data/<feedback_folder>/``) are merged in (metarec.feedback.fold). The tables land in
    ``data.prepared_dir`` whole or not at all.
    """
    from metarec.feedback.fold import fold_feedback

    root = Path(root)
    tables = read_source(dataclasses.replace(data, raw_dir=str(root / data.raw_dir)))
    tables = fold_feedback(tables, root / data.raw_dir / feedback_folder)
    write_tables(tables, root / data.prepared_dir)
    log.info("prepared %s: %s -> %s", tables.name, tables.summary(), root / data.prepared_dir)
    return tables
