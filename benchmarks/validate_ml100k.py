"""Wall time of validating the prepared MovieLens-100K tables (all GX suites).

Usage: ``python benchmarks/validate_ml100k.py [--prepared artifacts/prepared] [--params
params.yaml] [--repeat 3] [--artifacts DIR]``. Prints one JSON object: the wall time of the first
call (including the one-off Great Expectations import), of the later calls, and the verdict.
Needs the tables from `metarec data prepare`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default=None, help="default: data.prepared_dir")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--artifacts", default=None,
                        help="also write the GX result and Data Docs here (default: none)")
    args = parser.parse_args()

    from metarec.config import Config, load_config
    from metarec.data.tables import read_tables
    from metarec.data.validation import validate_tables

    cfg = load_config(args.params) if Path(args.params).exists() else Config()
    t0 = time.perf_counter()
    tables = read_tables(args.prepared or cfg.data.prepared_dir)
    read_s = time.perf_counter() - t0
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            out = Path(args.artifacts or tmp) / f"run{i}"
            start = time.perf_counter()
            report = validate_tables(tables, cfg.validation, cfg.tasks, artifact_dir=out)
            walls.append(time.perf_counter() - start)
    print(json.dumps({
        "benchmark": "validate_ml100k", "rows": tables.summary(), "read_tables_s": round(read_s, 3),
        "first_call_wall_s": round(walls[0], 3),  # includes importing great_expectations
        "later_calls_wall_s": [round(w, 3) for w in walls[1:]],
        "expectations": report.evaluated, "passed": report.passed,
        "failures": [f"[{f.table}] {f.expectation}: {f.message}" for f in report.failures],
        "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
