"""The ``serve`` section of params.yaml (`metarec serve`, `metarec recommend`), apart from
sections.py so that module stays short."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """The recommendation API (metarec.serve) and `metarec recommend`."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Most ratings accepted in one request (support set size inside the graph).
    max_ratings: int = 200
    # Largest k (number of recommendations) accepted in one request.
    max_k: int = 100
    # Model loaded at start and on POST /reload: a models:/ URI or a local export directory.
    model_uri: str = "models:/metarec@champion"
    # ONNX Runtime intra-op threads per session (0: ONNX Runtime's default).
    threads: int = 1
    # Worker processes of `metarec serve`, each with its own model (0: one per CPU core).
    workers: int = 1
    # Largest request body in bytes; more is refused with 413 before it is read in full.
    max_body_bytes: int = 65536
    # Per worker: requests processed at once, and requests waiting beyond them; a request
    # arriving when both are full gets 503 with Retry-After (load is shed, not queued).
    max_active: int = 1
    max_queue: int = 4
    retry_after_s: int = 1
    # Seconds an admitted request may take to send its body (then 408): a stalled upload
    # holds a queue place no longer.
    body_timeout_s: float = 10.0
    # Bearer token of POST /reload; $METAREC_SERVE_TOKEN takes precedence (prefer it: keep
    # secrets out of versioned files). None: /reload is disabled and only loopback binds.
    token: str | None = None
    # Seconds between a worker's checks for a reload another worker announced, and the
    # longest POST /reload waits for every worker to confirm it.
    reload_poll_s: float = 0.5
    reload_timeout_s: float = 60.0
