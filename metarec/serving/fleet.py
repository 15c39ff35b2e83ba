"""One model per worker process, and a reload that reaches every worker of a server.

`metarec serve --workers N` runs N processes (uvicorn's supervisor); each loads the model
itself, and a POST /reload lands on one of them. They agree through a directory the server
creates for its lifetime (:class:`ReloadBoard`):

* ``generation``: a counter. The worker that takes a /reload loads the model first (a model
  that fails to load changes nothing anywhere), then increments the counter under an
  exclusive ``flock`` so two reloads never claim the same number.
* every other worker's :class:`ModelHolder` reads the counter every ``serve.reload_poll_s``
  in a background thread, and on a larger value loads the model again and swaps it in whole
  (requests in flight finish on the model they started with; a failed load keeps the old
  model and says so).
* ``worker-<pid>.json``: what each live worker serves (generation, model, error); /reload
  waits until every worker reports the new generation and returns their states, or answers
  503 naming the ones that failed or did not confirm within ``serve.reload_timeout_s``.

Only the standard library: a file and a lock work for processes on one machine, which is
what uvicorn's workers are; several machines reload each of their servers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from metarec.io import write_json

log = logging.getLogger(__name__)

GENERATION = "generation"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class ReloadBoard:
    """The shared state directory of one server's workers (see module doc)."""

    def __init__(self, state_dir: str | Path, workers: int) -> None:
        self.dir = Path(state_dir)
        self.workers = workers

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / f"{GENERATION}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def current(self) -> int:
        """The latest generation announced (0 before any reload)."""
        try:
            return int((self.dir / GENERATION).read_text())
        except FileNotFoundError:
            return 0

    def bump(self) -> int:
        """Announce a reload: the new generation."""
        with self._locked():
            generation = self.current() + 1
            tmp = self.dir / f".{GENERATION}.{os.getpid()}"
            tmp.write_text(str(generation))
            os.replace(tmp, self.dir / GENERATION)  # readers see the old or the new number
        return generation

    def report(self, state: dict[str, Any]) -> None:
        """Publish this worker's state (``generation``, ``model``, ``error``...)."""
        write_json(self.dir / f"worker-{os.getpid()}.json", {"pid": os.getpid(), **state})

    def retire(self) -> None:
        (self.dir / f"worker-{os.getpid()}.json").unlink(missing_ok=True)

    def states(self) -> list[dict[str, Any]]:
        """The published states of the live workers, by pid."""
        import json

        out = []
        for path in sorted(self.dir.glob("worker-*.json")):
            try:
                state = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):  # a worker retiring right now
                continue
            if pid_alive(int(state["pid"])):
                out.append(state)
        return out

    def wait(self, generation: int, timeout_s: float, poll_s: float = 0.05) -> list[dict[str, Any]]:
        """The workers' states once ``self.workers`` of them report ``generation`` or later,
        or when ``timeout_s`` has passed (the caller checks which did)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            done = [s for s in states if s["generation"] >= generation]
            if len(done) >= self.workers or time.monotonic() >= deadline:
                return states
            time.sleep(poll_s)


class ModelHolder:
    """A worker's current model: loaded at start, swapped whole on reload.

    ``load`` makes a fresh model (a :class:`metarec.serve.Recommender`); without a board the
    holder is a single process's model and :meth:`reload` only reloads it.
    """

    def __init__(self, load: Callable[[], Any], board: ReloadBoard | None = None,
                 poll_s: float = 0.5) -> None:
        self._load = load
        self.board = board
        self.poll_s = poll_s
        self.model: Any = None
        self.generation = 0
        self._lock = threading.Lock()  # one load at a time in this worker
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            generation = self.board.current() if self.board else 0
            self._swap(self._load(), generation)
        if self.board is not None:
            self._watcher = threading.Thread(target=self._watch, name="metarec-reload-watch",
                                             daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self.board is not None:
            self.board.retire()

    def reload(self) -> int:
        """Load the model again here (an exception leaves everything as it was), then
        announce it to the other workers; the new generation."""
        with self._lock:
            model = self._load()
            generation = self.board.bump() if self.board else self.generation + 1
            self._swap(model, generation)
        return generation

    def _swap(self, model: Any, generation: int, error: str | None = None) -> None:
        self.model, self.generation = model, generation
        if self.board is not None:
            self.board.report({"generation": generation, "error": error,
                               "loaded_at": time.time(), **self.describe()})

    def describe(self) -> dict[str, Any]:
        info = self.model.info()
        return {"model": info["model"], "items": info["items"], "extra": info["extra"]}

    def _watch(self) -> None:
        assert self.board is not None
        while not self._stop.wait(self.poll_s):
            if self.board.current() <= self.generation:
                continue
            with self._lock:
                generation = self.board.current()
                if generation <= self.generation:  # this worker announced it itself
                    continue
                try:
                    self._swap(self._load(), generation)
                    log.info("worker %d reloaded (generation %d)", os.getpid(), generation)
                except Exception as exc:  # keep serving the old model; say why on the board
                    log.exception("worker %d: reload to generation %d failed", os.getpid(),
                                  generation)
                    self._swap(self.model, generation, f"{type(exc).__name__}: {exc}")
