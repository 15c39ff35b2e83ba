"""Large catalogs: adapt + top-10 over synthetic catalogs of 1,682 .. 1,000,000 items.

Each catalog is the export's real catalog (ML-100K's 1,682 items) plus synthetic items made by
the model's own item encoder from random attributes (a year bucket, 1-3 genres) and text
embeddings mixed from two real items' embeddings plus noise; their offsets are drawn from the
real items' offsets (a catalog of trained items, not only new ones). Each size is written as a
catalog version and measured in a fresh process, as a serving worker loads it (sha256-checked,
vectors memory-mapped), with one ONNX Runtime thread and one BLAS thread:

- exact: ``user.onnx`` (adapt) + a chunked scan of ``score.onnx`` over every item with a
  running partial sort (metarec.catalog.scoring), p50/p99 over random users (5-20 ratings);
- with --probes: the candidate stage (metarec.catalog.candidates; k-means lists over the
  precomputed first layer + offset) at each probe count: p50/p99 and the recall@100 of the
  exact top-10 (share of the exact top 10 found among the stage's 100 best);
- at 1,682 items also the single graph ``model.onnx`` (every item inside), today's path.

Memory: the worker's resident set after loading the catalog and its peak (ru_maxrss).

    .venv/bin/python benchmarks/catalog_scale.py --model artifacts/export \\
        --features artifacts/features --sizes 1682,10000,100000,1000000 --probes 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_catalog(export: Path, features: Path, n: int, seed: int = 0):
    """The export's catalog grown to ``n`` items by the item encoder (module docstring)."""
    from metarec.catalog.artifact import Catalog, read_catalog
    from metarec.export.runtime import session

    meta = json.loads((export / "metadata.json").read_text())
    entry = meta["catalog"]
    base = read_catalog(export / entry["dir"], mmap=False)
    if n <= len(base):
        keep = np.arange(n)
        return Catalog(base.ids[keep], base.titles[:n], base.vectors[keep], base.first[keep],
                       base.offset[keep], base.head[keep], base.retired[keep])
    rng = np.random.default_rng(seed)
    text = np.load(features / "features.npz")["item_text"].astype(np.float32)
    enc = session(export / entry["item_encoder"])
    names = list(entry["encoder_outputs"])
    cards = [len(e["edges"]) + 2 if e["kind"] == "bucket" else len(e["vocabulary"]) + 1
             for e in entry["item_encoders"]["item"]]
    parts = {k: [np.asarray(getattr(base, k))] for k in ("vectors", "first", "offset", "head")}
    todo = n - len(base)
    for start in range(0, todo, 50_000):
        m = min(50_000, todo - start)
        feed = {"item_cat": np.stack([rng.integers(1, c, m) for c in cards], 1).astype(np.int64)}
        for e in entry["item_encoders"]["item_multi"]:
            vocab = len(e["vocabulary"])
            bag = rng.integers(2, vocab + 2, (m, 3))
            bag[:, 1:] *= rng.random((m, 2)) < 0.4  # 1-3 genres, 0 pads
            feed[f"item_bag_{e['column']}"] = bag.astype(np.int64)
        a = rng.random((m, 1), np.float32)
        mix = a * text[rng.integers(0, len(text), m)] + (1 - a) * text[rng.integers(0, len(text), m)]
        mix += 0.05 * rng.standard_normal(mix.shape, np.float32)
        feed["item_text"] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
        out = dict(zip(names, enc.run(names, {k: feed[k] for k in entry["encoder_inputs"]})))
        parts["vectors"].append(out["item_vecs"])
        parts["first"].append(out["item_first"])
        parts["offset"].append(rng.choice(base.offset, m).astype(np.float32))
        parts["head"].append(out.get("item_head", np.zeros((m, base.head.shape[1]), np.float32)))
    ids = np.concatenate([base.ids, 10_000_000 + np.arange(todo)])
    return Catalog(ids, [*base.titles, *([None] * todo)],
                   retired=np.zeros(n, bool), **{k: np.concatenate(v) for k, v in parts.items()})


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(times: list[float]) -> dict[str, float]:
    """p50 and p99 in ms, and the fastest request (the least disturbed by other processes)."""
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "min_ms": round(float(ms.min()), 3)}


def sgemm_gflops() -> float:
    """The machine's single-thread float32 matrix product right now ((4096 x 64) @ (64 x 64),
    the scan's shape), best of 50: the yardstick of the figures beside it."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((4096, 64), np.float32)
    b = np.random.default_rng(1).random((64, 64), np.float32)
    out = np.empty((4096, 64), np.float32)
    best = np.inf
    with threadpool_limits(1):
        for _ in range(50):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return round(2 * 4096 * 64 * 64 / best / 1e9, 1)


def measure(export: Path, catalog_dir: Path, features: Path, requests: int, chunk: int,
            probes: list[int], lists: int | None) -> dict:
    """One catalog in this (fresh) process: load, then timed requests."""
    from metarec.catalog.artifact import read_catalog
    from metarec.catalog.scoring import CatalogGraphs

    meta = json.loads((export / "metadata.json").read_text())
    before = rss_mb()
    catalog = read_catalog(catalog_dir)
    graphs = CatalogGraphs(export, meta["catalog"], threads=1)
    np.asarray(catalog.first).sum()  # touch the arrays a scan reads
    loaded = rss_mb()
    rng = np.random.default_rng(1)
    users = np.load(features / "features.npz")["user_cat"]
    reqs = []
    for _ in range(requests + 5):
        s = int(rng.integers(5, 21))
        reqs.append((users[rng.integers(len(users))], rng.choice(min(len(catalog), 1682), s,
                                                                  replace=False),
                     rng.integers(1, 6, s).astype(np.float32)))
    exact, adapt_only, tops = [], [], []
    for i, (u, rows, r) in enumerate(reqs):
        t0 = time.perf_counter()
        state = graphs.adapt(catalog, u, rows, r)
        t1 = time.perf_counter()
        top = graphs.top_k(catalog, state, 10, rows, chunk)
        t2 = time.perf_counter()
        if i >= 5:  # warm-up excluded
            adapt_only.append(t1 - t0)
            exact.append(t2 - t0)
            tops.append((state, rows, top.rows))
    out = {"items": len(catalog), "sgemm_gflops": sgemm_gflops(), "exact": percentiles(exact),
           "adapt": percentiles(adapt_only), "rss_loaded_mb": round(loaded, 1),
           "rss_before_mb": round(before, 1)}
    if probes:
        from metarec.catalog.candidates import build_index

        lists = lists or int(2 * np.sqrt(len(catalog)))
        t0 = time.perf_counter()
        index = build_index(catalog, lists,
                            vectors="candidate_vecs" in graphs.score_inputs)
        out["index"] = {"lists": index.lists, "build_s": round(time.perf_counter() - t0, 2)}
        out["candidates"] = []
        for probe in probes:
            times, recall, scored = [], [], []
            for state, rows, want in tops:
                t0 = time.perf_counter()
                cand = index.candidates(graphs, catalog, state, probe, 100, rows)
                times.append(time.perf_counter() - t0)
                recall.append(len(set(want.tolist()) & set(cand.rows.tolist())) / len(want))
                scored.append(cand.scored)
            adapt = np.asarray(adapt_only)
            out["candidates"].append({"probe": probe, **percentiles(list(adapt + times)),
                                      "recall_at_100_of_top10": round(float(np.mean(recall)), 4),
                                      "rows_scored": int(np.mean(scored))})
    if len(catalog) == len(meta["item_ids"]):
        from metarec.serve import Recommender

        legacy_meta = dict(meta)
        legacy_meta.pop("catalog")
        with tempfile.TemporaryDirectory() as tmp:
            for f in ("model.onnx",):
                os.symlink((export / f).resolve(), Path(tmp) / f)
            (Path(tmp) / "metadata.json").write_text(json.dumps(legacy_meta))
            rec = Recommender(tmp, threads=1)
            times = []
            for i, (u, rows, r) in enumerate(reqs):
                t0 = time.perf_counter()
                rec.scores(u, rows, r, np.setdiff1d(np.arange(len(catalog)), rows))
                if i >= 5:
                    times.append(time.perf_counter() - t0)
        out["single_graph"] = percentiles(times)
    out["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "artifacts/export")
    p.add_argument("--features", type=Path, default=ROOT / "artifacts/features")
    p.add_argument("--sizes", default="1682,10000,100000,1000000")
    p.add_argument("--requests", type=int, default=0, help="per size (0: 500 .. 50 by size)")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--probes", default="", help="candidate stage probe counts, e.g. 8,16,32")
    p.add_argument("--lists", type=int, default=0, help="candidate lists (0: 2 sqrt(N))")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    probes = [int(x) for x in args.probes.split(",") if x]
    if args.measure is not None:  # the child: one size, one fresh process
        print(json.dumps(measure(args.model, args.measure, args.features, args.requests,
                                 args.chunk, probes, args.lists or None)))
        return
    from metarec.catalog.artifact import write_catalog

    results = []
    start_load = [round(x, 2) for x in os.getloadavg()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
            t0 = time.perf_counter()
            cat = synthetic_catalog(args.model, args.features, n)
            write_catalog(Path(tmp) / "c", cat, {"version": 1, "model_key": "bench"})
            made = time.perf_counter() - t0
            del cat
            requests = args.requests or (500 if n < 50_000 else 200 if n < 500_000 else 50)
            cmd = [sys.executable, __file__, "--measure", str(Path(tmp) / "c"), "--model",
                   str(args.model), "--features", str(args.features), "--requests",
                   str(requests), "--chunk", str(args.chunk), "--probes", args.probes,
                   "--lists", str(args.lists)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(requests=requests, built_s=round(made, 1))
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"results": results, "chunk": args.chunk, "threads": 1, "cpus": os.cpu_count(),
               "loadavg_start": start_load, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
