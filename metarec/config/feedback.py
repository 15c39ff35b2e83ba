"""The ``feedback`` section of params.yaml (its own module, as ``tune``: sections.py stays
under the module size limit). Read by metarec.feedback and the feedback endpoints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedbackConfig:
    """Online feedback (metarec.feedback; every key explained in params.yaml)."""

    # Event store: sqlite:///FILE (WAL mode) or postgresql://...; METAREC_FEEDBACK_URI wins.
    store_uri: str = "sqlite:///feedback.db"
    # Most events in one POST /feedback (serve.max_body_bytes applies too).
    max_batch: int = 200
    # How far an event's timestamp may lie ahead of the receiving clock (seconds).
    max_future_s: int = 300
    # Folder inside data.raw_dir holding the ingested events, quarantine and watermark.
    folder: str = "feedback"
    # The last ingest's contract result (GX) and quarantine report.
    out_dir: str = "artifacts/ingest"
