"""Limits applied before the app sees a request: body size (413) and admission (503).

:class:`RequestGuard` is plain ASGI middleware, so both checks run on the request's headers
and on the body as it arrives, before FastAPI reads or parses anything:

* a declared ``Content-Length`` over the limit is refused at once, unread; a chunked body
  is counted as it streams and refused as soon as it passes the limit (at most the limit
  plus one chunk is ever held);
* a worker holds at most ``max_active + max_queue`` admitted requests (``max_active`` in the
  app at once, the rest waiting for a slot, FIFO); one more is answered 503 with
  ``Retry-After`` straight away. Queueing without bound only turns overload into latency for
  everyone; a bounded queue keeps the admitted requests fast and tells the rest to come back.

An admitted request's body is read (within the size limit) before it takes a processing
slot, so a slow upload occupies a queue place, never the model, and only for
``body_timeout_s``: a body not complete by then is answered 408.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class GuardStats:
    """Counters of one worker's guard, read by GET /health."""

    pending: int = 0  # admitted requests not finished (active + waiting)
    admitted: int = 0
    shed: int = 0  # answered 503
    too_large: int = 0  # answered 413
    timed_out: int = 0  # answered 408: body not complete within body_timeout_s

    def to_dict(self) -> dict[str, int]:
        return {"pending": self.pending, "admitted": self.admitted, "shed": self.shed,
                "too_large": self.too_large, "timed_out": self.timed_out}


@dataclass(frozen=True)
class Limits:
    """What :class:`RequestGuard` enforces; ``exempt`` paths skip admission (never the size
    limit), so health checks and reloads still answer under overload."""

    max_body_bytes: int
    max_active: int
    max_queue: int
    retry_after_s: int
    body_timeout_s: float = 10.0
    exempt: frozenset[str] = field(default_factory=lambda: frozenset({"/health", "/reload"}))

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_active", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"serve.max_queue must be at least 0, got {self.max_queue}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"serve.body_timeout_s must be positive, got {self.body_timeout_s}")


async def reply(send: Send, status: int, detail: str,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A whole JSON ``{"detail": ...}`` response (FastAPI's error shape)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (None when absent: no body, or a chunked one)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value)  # the HTTP parser has already refused a non-numeric one
    return None


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes (the rest is left unread);
    raises :class:`ConnectionAbortedError` when the client goes away mid-body."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` once, then defers to the server's (which
    reports the disconnect)."""
    sent = False

    async def _receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive


class RequestGuard:
    """ASGI middleware enforcing :class:`Limits` on every HTTP request (see module doc)."""

    def __init__(self, app: App, *, limits: Limits, stats: GuardStats) -> None:
        self.app = app
        self.limits = limits
        self.stats = stats
        self.slots = asyncio.Semaphore(limits.max_active)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self.limits
        declared = declared_length(scope)
        if declared is not None and declared > lim.max_body_bytes:
            await self._too_large(send, declared)
            return
        admit = scope["path"] not in lim.exempt
        if admit and self.stats.pending >= lim.max_active + lim.max_queue:
            self.stats.shed += 1
            await reply(send, 503, f"server busy: {self.stats.pending} requests in progress or "
                                   f"queued on this worker; retry after {lim.retry_after_s} s",
                        ((b"retry-after", str(lim.retry_after_s).encode()),))
            return
        self.stats.pending += admit
        try:
            try:
                async with asyncio.timeout(lim.body_timeout_s):
                    body = await read_body(receive, lim.max_body_bytes)
            except ConnectionAbortedError:
                return
            except TimeoutError:
                self.stats.timed_out += 1
                await reply(send, 408, f"request body not complete within "
                                       f"{lim.body_timeout_s} s (serve.body_timeout_s)",
                            ((b"connection", b"close"),))
                return
            if body is None:
                await self._too_large(send, None)
                return
            if not admit:
                await self.app(scope, replay(body, receive), send)
                return
            self.stats.admitted += 1
            async with self.slots:  # FIFO: asyncio wakes waiters in order
                await self.app(scope, replay(body, receive), send)
        finally:
            self.stats.pending -= admit

    async def _too_large(self, send: Send, declared: int | None) -> None:
        self.stats.too_large += 1
        size = f"{declared} bytes" if declared is not None else \
            f"more than {self.limits.max_body_bytes} bytes"
        await reply(send, 413, f"request body too large: {size}; at most "
                               f"{self.limits.max_body_bytes} bytes (serve.max_body_bytes)",
                    ((b"connection", b"close"),))
