"""The ``catalog`` section of params.yaml (metarec.catalog), apart from sections.py so that
module stays short; :class:`metarec.config.sections.Config` holds it like any other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogConfig:
    """The item catalog: its versions, new items without retraining, scoring large catalogs
    (metarec.catalog)."""

    # Catalog versions, one folder per model (its key) and version; LATEST names the newest.
    dir: str = "artifacts/catalogs"
    # The new-items file the Dagster sensor watches (`metarec items add --items` takes any).
    items_file: str = "incoming/new_items.csv"
    # Seconds between a serving worker's checks for a newer catalog version (store and
    # registry); 0: only POST /reload picks one up.
    poll_s: float = 2.0
    # Items scored per chunk when a request scans the catalog (one chunk's scores in memory).
    chunk: int = 4096
    # Candidate stage for large catalogs (metarec.catalog.candidates): 0 scores every item
    # exactly; N > 0 partitions the catalog into N k-means lists when a catalog version loads
    # (each worker; seconds at 1M items) and a request scores exactly only the members of the
    # `candidate_probe` lists whose centres score best (recall measured in benchmarks/).
    candidate_lists: int = 0
    candidate_probe: int = 16
