"""Summarise Optuna studies that `metarec tune` ran, as markdown: trials by state, wall time per
trial and in total, the best trial beside the current settings (trial 0) with the paired
difference, and the best settings of each study side by side.

    .venv/bin/python benchmarks/tune_summary.py --study ml100k=sqlite:///artifacts/tune/optuna.db \\
        --study lowrank=sqlite:///other/optuna.db [--first 15]

``--first N``: only the first N trials of each study (to compare a pruned and an unpruned
study over the same number of trials).
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

import numpy as np


def summarise(name: str, url: str, first: int | None) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in study.get_trials() if first is None or t.number < first]
    seconds = [t.user_attrs["seconds"] for t in trials if "seconds" in t.user_attrs]
    span = max(t.datetime_complete for t in trials if t.datetime_complete) - min(
        t.datetime_start for t in trials if t.datetime_start)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    feasible = [t for t in done if all(v <= 0 for v in t.constraints.values())] if done else []
    best = min(feasible or done, key=lambda t: t.value)
    ref = next(t for t in done if t.user_attrs.get("reference"))
    d = np.array(best.user_attrs["per_task"]) - np.array(ref.user_attrs["per_task"])
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"study": name, "trials": len(trials), "states": states,
            "seconds_per_trial_mean": round(float(np.mean(seconds)), 1),
            "seconds_per_trial_median": round(float(np.median(seconds)), 1),
            "seconds_trials_total": round(float(np.sum(seconds)), 1),
            "wall_first_start_to_last_end": str(timedelta(seconds=round(span.total_seconds()))),
            "best": best.number, "best_value": round(best.value, 4),
            "best_se": round(best.user_attrs["se"], 4), "feasible": bool(feasible),
            "reference_value": round(ref.value, 4), "reference_se": round(ref.user_attrs["se"], 4),
            "difference": round(float(d.mean()), 4),
            "difference_se": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4),
            "tasks": len(d), "best_params": best.params, "reference_params": ref.params,
            "constraint": best.user_attrs.get("constraint")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", action="append", required=True, metavar="NAME=URL")
    ap.add_argument("--first", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    rows = [summarise(*s.split("=", 1), args.first) for s in args.study]
    print("| study | trials (states) | s/trial mean (median) | trials total | wall | best trial: "
          "CV score ± se | current (trial 0) | best - current (paired) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['study']} | {r['trials']} {r['states']} | {r['seconds_per_trial_mean']} "
              f"({r['seconds_per_trial_median']}) | {r['seconds_trials_total']} s | "
              f"{r['wall_first_start_to_last_end']} | {r['best']}: {r['best_value']} ± "
              f"{r['best_se']}{'' if r['feasible'] else ' (none feasible)'} | "
              f"{r['reference_value']} ± {r['reference_se']} | {r['difference']:+} ± "
              f"{r['difference_se']} ({r['tasks']} users) |")
    keys = list(rows[0]["best_params"])
    print("\n| setting | current | " + " | ".join(f"best, {r['study']}" for r in rows) + " |")
    print("|---" * (len(rows) + 2) + "|")
    for k in keys:
        cells = [r["best_params"].get(k) for r in rows]
        fmt = [f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells]
        print(f"| {k} | {rows[0]['reference_params'][k]} | " + " | ".join(fmt) + " |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
