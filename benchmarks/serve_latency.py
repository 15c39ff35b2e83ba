"""Serving latency: adapt to 10 ratings and score every item, in ONNX Runtime and over HTTP.

Two measurements, printed as one JSON object (and written to --out):

1. ``onnx``: one ``model.onnx`` run (adaptation inside the graph, 10 support ratings, all items
   as candidates) on one CPU thread; p50/p99 over --iterations runs (targets: 2 ms / 5 ms).
   ``recommend`` adds request encoding and the top-k selection around the same run.
2. ``http``: ``metarec serve`` started on loopback in a subprocess, POST /recommend at a fixed
   --rate (open loop: latency counted from each request's scheduled send time, so a stalled
   server cannot hide its queueing) for --duration seconds; p50/p99 and errors (target: p99
   30 ms, zero errors). Loopback only, bounded in count and time.

Without --model it exports an untrained estimator over the prepared features
(features.out_dir, the ML-100K default: 1,682 items); latency does not depend on the weights.

    python benchmarks/serve_latency.py [--model DIR_OR_URI] [--out artifacts/bench/serve.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from metarec.config import load_config
from metarec.serve import Recommender


def export_untrained(params: Path, out: Path, seed: int) -> Path:
    """Export a randomly initialised estimator over the configured features into ``out``."""
    import pandas as pd
    import torch

    from metarec.export import export_onnx
    from metarec.features.build import load_encoders, load_features
    from metarec.meta.learners import build_learner
    from metarec.models.estimator import build_model

    cfg = load_config(params)
    features = load_features(cfg.features.out_dir)
    encoders = load_encoders(cfg.features.out_dir)
    items = pd.read_parquet(Path(cfg.data.prepared_dir) / "items.parquet", columns=["item_id", "title"])
    torch.manual_seed(seed)
    model = build_model(features, cfg.model).eval()
    export_onnx(model, build_learner(model, cfg.meta).adaptation(), features, out,
                opset=cfg.export.opset,
                user_encoders=encoders.to_dict()["user"],
                titles=dict(zip(items["item_id"].astype(int), items["title"].astype(str))),
                rating_range=(cfg.validation.rating_min, cfg.validation.rating_max))
    return out


def pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(float(arr.mean()), 3), "n": int(arr.size)}


def bench_onnx(model_dir: Path, iterations: int, rng: np.random.Generator) -> dict:
    rec = Recommender(model_dir, threads=1)
    n = len(rec.item_ids)
    ratings = {int(rec.item_ids[i]): float(rng.integers(1, 6)) for i in rng.choice(n, 10, replace=False)}
    user_cat = rec.encode_user(None)
    rows, values = rec.encode_ratings(ratings)
    cands = np.arange(n, dtype=np.int64)
    for _ in range(50):  # warm-up
        rec.scores(user_cat, rows, values, cands)
    graph, full = [], []
    for _ in range(iterations):
        t = time.perf_counter()
        rec.scores(user_cat, rows, values, cands)
        graph.append(time.perf_counter() - t)
    for _ in range(iterations):
        t = time.perf_counter()
        rec.recommend(None, ratings, k=10)
        full.append(time.perf_counter() - t)
    return {"items": n, "support": 10, "threads": 1, "providers": rec.session.get_providers(),
            "graph": pct(graph), "recommend": pct(full), "targets_ms": {"p50": 2.0, "p99": 5.0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_dir: Path, params: Path, workers: int = 1,
                   env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """`metarec serve` on a free loopback port in a subprocess, until the block ends: (port,
    process). Waits for GET /health; the server's stderr is in the error if it dies."""
    port = free_port()
    cmd = [sys.executable, "-m", "metarec.cli", "--params", str(params), "serve",
           "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
           "--workers", str(workers)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        yield port, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def bench_http(model_dir: Path, params: Path, rate: float, duration: float, workers: int,
               rng: np.random.Generator) -> dict:
    with running_server(model_dir, params) as (port, _):
        item_ids = json.loads((model_dir / "metadata.json").read_text())["item_ids"]
        total = int(rate * duration)
        bodies = []
        for _ in range(total):
            picks = rng.choice(item_ids, 10, replace=False)
            bodies.append(json.dumps({"ratings": {str(i): int(rng.integers(1, 6)) for i in picks},
                                      "k": 10}).encode())
        jobs: queue.Queue = queue.Queue()
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while (job := jobs.get()) is not None:
                scheduled, body = job
                try:
                    conn.request("POST", "/recommend", body, {"content-type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                    err = None if ok else f"HTTP {resp.status}"
                except OSError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                done = time.perf_counter()
                with lock:
                    (errors.append(err) if err else lat.append(done - scheduled))
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        start = time.perf_counter() + 0.1
        for i, body in enumerate(bodies):  # open loop: fixed schedule, whatever the server does
            scheduled = start + i / rate
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            jobs.put((scheduled, body))
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join(timeout=30)
        elapsed = time.perf_counter() - start
        return {"rate_rps": rate, "requests": total, "duration_s": round(elapsed, 2),
                "errors": len(errors), "error_examples": errors[:5], "latency": pct(lat),
                "load_generator": f"python open-loop, {workers} keep-alive connections",
                "target_p99_ms": 30.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="Export directory or models:/ URI.")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "true")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            model_dir = export_untrained(args.params, Path(tmp) / "export", args.seed)
            source = "untrained estimator over the prepared features"
        else:
            cfg = load_config(args.params)
            from metarec.serve import resolve_model_dir
            model_dir = resolve_model_dir(args.model, cfg.tracking.tracking_uri, dest=tmp)
            source = args.model
        result = {"model": source, "cpu_count": os.cpu_count(),
                  "onnx": bench_onnx(model_dir, args.iterations, rng),
                  "http": bench_http(model_dir, args.params, args.rate, args.duration,
                                     args.workers, rng)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
