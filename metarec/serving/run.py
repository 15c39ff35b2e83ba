"""Starting the server: the bind check, the worker count, uvicorn.

:func:`run_server` refuses a non-loopback address unless a token protects /reload and
/feedback, makes
the :class:`~metarec.serving.fleet.ReloadBoard` directory for the server's lifetime (removed
at exit), and hands uvicorn the app factory: with ``workers > 1`` uvicorn's supervisor starts
that many processes on one listening socket (the kernel spreads the connections) and restarts
one that dies; each worker loads the model itself.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from metarec.config import CatalogConfig, ServeConfig
from metarec.serving.app import RUNTIME_ENV, TOKEN_ENV, runtime_env, serve_token

log = logging.getLogger(__name__)


class BindRefused(ValueError):
    """A bind that would expose an unprotected /reload."""


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (``127.0.0.1``, ``::1``,
    ``localhost``); an unresolvable name or a wildcard (``0.0.0.0``, ``::``) is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`BindRefused` for a non-loopback ``host`` without a token."""
    if token is None and not is_loopback(host):
        raise BindRefused(f"refusing to bind {host!r} without a token: POST /reload would be "
                          f"open to the network. Set ${TOKEN_ENV} (or serve.token), or bind "
                          f"127.0.0.1")


def worker_count(workers: int) -> int:
    """``workers``, or one per usable CPU core for 0."""
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or more, got {workers}")
    return workers or len(os.sched_getaffinity(0))


def run_server(cfg: ServeConfig, *, model_uri: str, tracking_uri: str | None, host: str,
               port: int, workers: int, catalog: CatalogConfig | None = None,
               profiles=None) -> None:
    """Serve ``model_uri`` on ``host:port`` with ``workers`` processes until interrupted;
    ``profiles`` (:class:`metarec.serving.profiles.Profiles`): the event store settings."""
    import uvicorn

    check_bind(host, serve_token(cfg))
    workers = worker_count(workers)
    state_dir = tempfile.mkdtemp(prefix="metarec-serve-")
    os.environ[RUNTIME_ENV] = runtime_env(model_uri, cfg, tracking_uri, state_dir, workers,
                                          catalog, profiles)
    log.info("serving %s on %s:%d with %d worker(s)", model_uri, host, port, workers)
    # uvicorn re-raises the SIGTERM it shut down on; exit through `finally` then, not by the
    # default action that would leave the board directory behind.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    try:
        uvicorn.run("metarec.serving.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="info", access_log=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.environ.pop(RUNTIME_ENV, None)
        shutil.rmtree(state_dir, ignore_errors=True)
