"""Why a split never trains: meta-train one split of a suite dataset and print its validation
history, for settings given as ``--set`` groups (training + validation users only: the test
users of the split are built into tasks but never scored).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_stall.py --dataset ml100k-5to500 \
        --seed 6 --try "" --try "train.lr=5e-5" --out benchmarks/results/diag_stall_5to500_s6.json

Each ``--try`` is a space-separated list of SECTION.KEY=VALUE overrides ("" = the defaults); the
data stages run once per split, every try trains from the same tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
import curves  # noqa: E402
import suite  # noqa: E402
from ml100k_quality import _override  # noqa: E402

from metarec.config import config_from_dict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["ml100k", *suite.VARIANTS])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--try", dest="tries", action="append", default=[])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="artifacts/prepared")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--variant-seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    args.option = []
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from metarec.pipeline.train import train_meta_model

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="metarec-stall-")).resolve()
    overrides, raw_dir, _ = curves._dataset(args, root)
    base = suite.merge(yaml.safe_load(Path(args.params).read_text()), overrides)
    ws = root / f"seed{args.seed}"
    cfg = config_from_dict(curves._workspace_params(base, ws, raw_dir, args.seed, 0), args.params)
    inputs = curves.build_inputs(cfg, ws)
    results = []
    for spec in args.tries or [""]:
        raw = suite.merge(base, {})
        _override(raw, shlex.split(spec))
        run_cfg = config_from_dict(curves._workspace_params(raw, ws, raw_dir, args.seed, 0),
                                   args.params)
        t0 = time.time()
        summary = train_meta_model(run_cfg, inputs, resume=False, track=False)
        row = {"try": spec, "seconds": round(time.time() - t0, 1),
               **{k: summary.get(k) for k in ("steps", "best_step", "best_valid_mae",
                                               "criterion", "fallback_valid_mae",
                                               "head_factors_choice", "model")},
               "history": [{k: round(v, 5) for k, v in h.items()} for h in summary["history"]]}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "seed": args.seed,
                                              "git": curves._git_sha(),
                                              "machine": curves._machine(), "runs": results},
                                             indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
