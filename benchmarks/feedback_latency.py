"""The online loop's round trip under load: POST /feedback (one rating) then POST /recommend for
that user (its stored profile as the support set), at a fixed rate against `metarec serve`.

Starts ``metarec serve`` on loopback (a SQLite WAL event store in a temporary folder, a bearer
token so /feedback is authenticated as in production) and, from an open-loop generator, starts
one round trip every 1/--rate seconds for --seconds: each round trip is a new rating by one of
--users users (so profiles grow to tens of ratings) followed by the recommendation for that
user, sequentially on one keep-alive connection of a pool. Latency runs from the round trip's
*scheduled* start to the recommendation's answer, so queueing anywhere counts. Reports p50,
p90, p99 and max, the achieved rate, non-200 answers, and the store's row count afterwards
(every posted rating must be there). Writes one JSON object (--out).

    python benchmarks/feedback_latency.py --model DIR --rate 100 --seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import running_server  # noqa: E402

TOKEN = "replay-benchmark-token-0123456789"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="an export directory")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--clients", type=int, default=32, help="generator threads/connections")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feedback_latency.json"))
    args = ap.parse_args()

    meta = json.loads((args.model / "metadata.json").read_text())
    items = [int(i) for i in meta["item_ids"]]
    tmp = Path(tempfile.mkdtemp(prefix="metarec-fb-bench-"))
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({
        "feedback": {"store_uri": f"sqlite:///{tmp}/feedback.db"},
        "serve": {"max_queue": 64, "max_active": 4}}))
    n = int(args.rate * args.seconds)
    rng = np.random.default_rng(0)
    plan = [(int(9_000_000 + rng.integers(args.users)), int(rng.choice(items)),
             int(rng.integers(1, 6))) for _ in range(n)]
    local = threading.local()
    results: list[tuple[float, int, int]] = [(0.0, 0, 0)] * n

    def post(port: int, path: str, body: dict, headers: dict | None = None) -> int:
        """POST on this thread's keep-alive connection (reconnecting once if it was closed)."""
        for attempt in (0, 1):
            if getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                local.conn.request("POST", path, body=json.dumps(body), headers={
                    "content-type": "application/json", **(headers or {})})
                resp = local.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                local.conn.close()
                local.conn = None
                if attempt:
                    return 0
        return 0

    def one(i: int, port: int, t0: float) -> None:
        due = t0 + i / args.rate
        time.sleep(max(0.0, due - time.perf_counter()))
        user, item, rating = plan[i]
        fb = post(port, "/feedback", {"events": [{"event_id": f"bench-{i}", "user_id": user,
                                                   "item_id": item, "rating": rating}]},
                  {"Authorization": f"Bearer {TOKEN}"})
        rec = post(port, "/recommend", {"user_id": user, "k": 10})
        results[i] = (time.perf_counter() - due, fb, rec)

    env = {"METAREC_SERVE_TOKEN": TOKEN, "METAREC_FEEDBACK_URI": f"sqlite:///{tmp}/feedback.db"}
    with running_server(args.model, params, workers=args.workers, env=env) as (port, _):
        post(port, "/recommend", {"user_id": 1, "k": 10})  # first-use costs (store, session)
        local.conn = None
        t0 = time.perf_counter() + 0.5
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda i: one(i, port, t0), range(n)))
        wall = time.perf_counter() - t0
    from metarec.feedback.store import EventStore

    stored = EventStore(f"sqlite:///{tmp}/feedback.db").count()
    lat = np.array([r[0] for r in results]) * 1e3
    bad = sum(1 for r in results if r[1] != 200 or r[2] != 200)
    out = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, "
           f"{os.cpu_count()} CPUs visible (shared with other work)",
           "model_items": len(items), "rate_target": args.rate, "round_trips": n,
           "rate_achieved": round(n / wall, 1), "workers": args.workers,
           "p50_ms": round(float(np.percentile(lat, 50)), 2),
           "p90_ms": round(float(np.percentile(lat, 90)), 2),
           "p99_ms": round(float(np.percentile(lat, 99)), 2),
           "max_ms": round(float(lat.max()), 2), "non_200": bad, "stored_events": stored}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
