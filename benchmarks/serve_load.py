"""Serving under load: the highest request rate `metarec serve` sustains, and what happens past it.

For each worker count (--workers, e.g. ``1 2``) the script starts ``metarec serve --workers W``
on loopback and drives POST /recommend (10 random ratings, k=10, all items scored) from an
open-loop generator: requests leave at a fixed rate whatever the server does, and each
latency is counted from the request's *scheduled* send time, so queueing anywhere (server,
kernel, generator) shows up in it. It then

1. sends eight 20 MB bodies at once while timing valid requests, with the server's
   resident memory before and after (each upload should be refused with 413);
2. searches the highest rate whose p99 over *all* requests is <= --target-p99-ms, a 503 or
   an error counting as a miss (so at most 1% may be shed): geometric steps of --step, then
   --bisect halvings between the last pass and the first fail; a failing probe is repeated
   once before it counts (one stall of a shared machine is not the limit);
3. runs at --overload (default 3) times that rate and reports p50/p99 of the *admitted*
   requests (HTTP 200), the share answered 503 (and whether each carried Retry-After), errors,
   and the goodput (200s per second).

The server and the generator share the machine; on a machine busy with other work run the
script in its own, favoured scheduling group (Linux autogroups: ``nice`` alone does not reach
across sessions), e.g. ``setsid sh -c 'echo -19 > /proc/self/autogroup; exec python ...'``.
The generator is asyncio on raw sockets, one new connection per request by default (many
clients; the kernel hands each connection to an idle worker), or --connections N keep-alive
connections. It shares the machine with the server: its own lag (actual - scheduled send) is
reported so a saturated generator is visible. Writes one JSON object (--out).

    python benchmarks/serve_load.py --workers 1 2 --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import export_untrained, pct, running_server  # noqa: E402


def make_bodies(item_ids: list[int], n: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for _ in range(n):
        picks = rng.choice(item_ids, 10, replace=False)
        out.append(json.dumps({"ratings": {str(i): int(rng.integers(1, 6)) for i in picks},
                               "k": 10}).encode())
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                    body: bytes, close: bool) -> tuple[int, dict[str, str]]:
    """One POST /recommend on an open connection: status and headers (body read, dropped)."""
    writer.write(b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1:%d\r\ncontent-type: "
                 b"application/json\r\ncontent-length: %d\r\n%s\r\n"
                 % (port, len(body), b"connection: close\r\n" if close else b"") + body)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", 0)))
    return int(lines[0].split(" ")[1]), headers


async def open_loop(port: int, bodies: list[bytes], rate: float, connections: int) -> dict:
    """Send ``bodies`` at ``rate`` per second (open loop); the outcome of every request."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    ok, shed, lag = [], [], []
    errors: list[str] = []
    retry_after = [0, 0]  # 503s with / without Retry-After

    async def one(scheduled: float, body: bytes) -> None:
        lag.append(loop.time() - scheduled)
        conn = idle.pop(0) if connections and idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            status, headers = await _exchange(*conn, port, body, close=not connections)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if conn is not None:
                conn[1].close()
            return
        done = loop.time() - scheduled
        if connections and headers.get("connection") != "close":
            idle.append(conn)
        else:
            conn[1].close()
        if status == 200:
            ok.append(done)
        elif status == 503:
            shed.append(done)
            retry_after["retry-after" not in headers] += 1
        else:
            errors.append(f"HTTP {status}")

    for _ in range(connections):  # keep-alive pool, opened before the clock starts
        idle.append(await asyncio.open_connection("127.0.0.1", port))
    start = loop.time() + 0.05
    tasks = []
    for i, body in enumerate(bodies):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled, body)))
    await asyncio.wait(tasks, timeout=60)
    elapsed = loop.time() - start
    for _, writer in idle:
        writer.close()
    n = len(bodies)
    # p99 of all requests, a 503 or an error counting as infinitely slow: the SLO reading
    everything = np.concatenate([np.asarray(ok), np.full(n - len(ok), np.inf)]) * 1e3
    p99_all = float(np.percentile(everything, 99, method="higher"))
    return {"rate_rps": rate, "requests": n, "duration_s": round(elapsed, 2),
            "p99_all_ms": round(p99_all, 3) if np.isfinite(p99_all) else None,
            "admitted": pct(ok) if ok else None, "shed_share": round(len(shed) / n, 4),
            "shed_latency": pct(shed) if shed else None,
            "shed_with_retry_after": retry_after[0], "shed_without_retry_after": retry_after[1],
            "errors": len(errors), "error_examples": errors[:3],
            "goodput_rps": round(len(ok) / elapsed, 1), "generator_lag": pct(lag)}


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MB (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")), 0) / 1024
    return own + sum(rss_mb(int(k)) for k in kids)


async def big_bodies(port: int, body: bytes, uploads: int = 8, size: int = 20_000_000) -> dict:
    """``uploads`` clients each sending a ``size``-byte body at once (declared length, sent
    in full as a naive client does), while one client times valid requests one after another."""
    async def upload() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /recommend HTTP/1.1\r\nHost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n" % size)
        sent = 0
        try:
            for _ in range(size // 100_000):
                writer.write(b" " * 100_000)
                await writer.drain()
                sent += 100_000
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            return f"HTTP {head.split(b' ')[1].decode()} after {sent} bytes"
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            # the server answered 413 and closed while the body was still coming: the
            # client's kernel drops the answer on the reset (curl & co. send Expect:
            # 100-continue and read it); how much was accepted before the cut is the point
            return f"{type(exc).__name__} after {sent} bytes"
        finally:
            writer.close()

    async def valid() -> list[float]:
        out = []
        for _ in range(20):
            t = time.perf_counter()
            conn = await asyncio.open_connection("127.0.0.1", port)
            status, _ = await _exchange(*conn, port, body, close=True)
            conn[1].close()
            assert status == 200, status
            out.append(time.perf_counter() - t)
        return out

    results = await asyncio.gather(*(upload() for _ in range(uploads)), valid())
    return {"uploads": uploads, "upload_bytes": size, "upload_outcomes": list(results[:-1]),
            "valid_requests": pct(results[-1])}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (Linux /proc): what the server
    spent, whatever else runs on the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return own + sum(cpu_seconds(int(k)) for k in kids)


def probe(server_pid: int, port: int, item_ids: list[int], rate: float, duration: float,
          connections: int, rng: np.random.Generator) -> dict:
    bodies = make_bodies(item_ids, max(1, int(rate * duration)), rng)
    try:  # uvloop when present: a cheaper generator leaves more of the machine to the server
        from uvloop import run
    except ImportError:
        run = asyncio.run
    cpu = cpu_seconds(server_pid)
    out = run(open_loop(port, bodies, rate, connections))
    out["server_cpu_ms_per_request"] = round(1e3 * (cpu_seconds(server_pid) - cpu) / len(bodies), 3)
    return out


def passes(run: dict, target_ms: float) -> bool:
    return run["p99_all_ms"] is not None and run["p99_all_ms"] <= target_ms


def search(pid: int, port: int, item_ids: list[int], args: argparse.Namespace,
           rng: np.random.Generator) -> tuple[float, list[dict]]:
    """The highest passing rate found, and every probe run (in order). A failing probe is
    run once more before it counts: one stall of a shared machine is not the limit."""
    runs: list[dict] = []

    def ok(rate: float) -> bool:
        for attempt in range(2):
            run = probe(pid, port, item_ids, rate, args.duration, args.connections, rng)
            runs.append({**run, "pass": passes(run, args.target_p99_ms), "attempt": attempt})
            print(f"  {rate:7.1f} req/s: {summary(run)}", file=sys.stderr, flush=True)
            if runs[-1]["pass"]:
                return True
        return False

    good, bad, rate = 0.0, None, args.start_rate
    while bad is None and rate <= args.max_rate:
        if ok(rate):
            good, rate = rate, round(rate * args.step, 1)
        else:
            bad = rate
    for _ in range(args.bisect if bad is not None and good else 0):
        rate = round((good + bad) / 2, 1)
        good, bad = (rate, bad) if ok(rate) else (good, rate)
    return good, runs


def summary(run: dict) -> str:
    adm = run["admitted"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return (f"all p99 {run['p99_all_ms'] or float('inf'):.1f} ms; admitted p50 {adm['p50_ms']:.1f} ms, "
            f"p99 {adm['p99_ms']:.1f} ms, 503 "
            f"{100 * run['shed_share']:.1f}%, errors {run['errors']}, goodput "
            f"{run['goodput_rps']} req/s, generator lag p99 {run['generator_lag']['p99_ms']:.1f} "
            f"ms, server CPU {run['server_cpu_ms_per_request']:.2f} ms/request")


def bench_workers(model_dir: Path, params: Path, workers: int, args: argparse.Namespace,
                  rng: np.random.Generator) -> dict:
    item_ids = json.loads((model_dir / "metadata.json").read_text())["item_ids"]
    with running_server(model_dir, params, workers) as (port, server):
        print(f"{workers} worker(s):", file=sys.stderr, flush=True)
        probe(server.pid, port, item_ids, args.start_rate, 2.0, args.connections, rng)  # warm-up
        rss = rss_mb(server.pid)
        oversize = asyncio.run(big_bodies(port, make_bodies(item_ids, 1, rng)[0]))
        oversize.update(rss_before_mb=round(rss, 1), rss_after_mb=round(rss_mb(server.pid), 1))
        print(f"  8 x 20 MB uploads: {oversize['upload_outcomes']}, valid requests meanwhile "
              f"p99 {oversize['valid_requests']['p99_ms']:.1f} ms, RSS {oversize['rss_before_mb']}"
              f" -> {oversize['rss_after_mb']} MB", file=sys.stderr, flush=True)
        best, runs = search(server.pid, port, item_ids, args, rng)
        over = probe(server.pid, port, item_ids, best * args.overload, args.overload_duration,
                     args.connections, rng) if best else None
        if over:
            print(f"  {args.overload}x = {best * args.overload:.1f} req/s: {summary(over)}",
                  file=sys.stderr, flush=True)
    return {"workers": workers, "oversize_uploads": oversize, "max_rate_rps": best,
            "overload_factor": args.overload,
            "overload": over, "search": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="Export directory (default: an untrained "
                    "estimator over the prepared features, as serve_latency.py).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--serve", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a serve.* setting for the run, e.g. --serve max_queue=8.")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--target-p99-ms", type=float, default=30.0)
    ap.add_argument("--start-rate", type=float, default=40.0)
    ap.add_argument("--max-rate", type=float, default=5000.0)
    ap.add_argument("--step", type=float, default=1.25)
    ap.add_argument("--bisect", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="Seconds per search probe.")
    ap.add_argument("--overload", type=float, default=3.0)
    ap.add_argument("--overload-duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=0,
                    help="Keep-alive connections (0: a new connection per request).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="Free text stored with the result.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "true")
    rng = np.random.default_rng(args.seed)
    raw = yaml.safe_load(args.params.read_text()) or {}
    for item in args.serve:
        key, _, value = item.partition("=")
        raw.setdefault("serve", {})[key] = yaml.safe_load(value)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        if args.model is None:
            model_dir = export_untrained(args.params, Path(tmp) / "export", args.seed)
            source = "untrained estimator over the prepared features"
        else:
            model_dir, source = Path(args.model), args.model
        items = len(json.loads((model_dir / "metadata.json").read_text())["item_ids"])
        results = [bench_workers(model_dir, params, w, args, rng) for w in args.workers]
    result = {"model": source, "items": items,
              "serve": raw.get("serve", {}), "cpu_count": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "generator": "asyncio raw sockets, open loop, " + (
                  f"{args.connections} keep-alive connections" if args.connections
                  else "one connection per request"),
              "target_p99_ms": args.target_p99_ms, "probe_duration_s": args.duration,
              "note": args.note, "command": " ".join(sys.argv), "results": results}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
