"""Issue 14's acceptance, read off the pooled curve records: one line per dataset, scenario and
metric, one cell per support size, each cell the candidate's standing against every baseline.

Input: result files of ``curves.py`` (a run over seeds, or ``curves.py --pool``), each holding
``differences[scenario][k][metric]["vs"][baseline] = {"diff", "interval"}``: the candidate minus
that baseline, pooled over the seeds' test users, with its 95% interval. Nothing is trained or
read from test users here: this only classifies what the records already say.

A cell against one baseline is

- ``ahead``: the whole interval on the better side (lower MAE, higher nDCG);
- ``ahead~``: the point estimate better, the interval reaching the other side;
- ``behind~``: the point estimate not better, the interval reaching the better side;
- ``behind``: the whole interval on the worse side.

A cell's standing is its worst against any baseline. The issue asks the candidate to beat every
baseline at every k; at 0 ratings to be at least equal to item_mean within its interval, so a
0-shot cell holds unless it is ``behind`` item_mean. From 1 rating on, ``--reading`` says what
holds:

- ``point`` (default): the point estimate ahead of every baseline (``ahead`` or ``ahead~``),
  the issue's words read on a point;
- ``strict`` (also ``--strict``): ``ahead`` of every baseline, the whole interval better;
- ``gate``: the pipeline's own rule (``gate.rule: paired_bootstrap``,
  metarec/evaluation/gate.py): not ``behind`` any baseline, and at full support ("all") also
  ahead on the point. At 0 ratings it asks the same of every baseline, not only item_mean.

    .venv/bin/python benchmarks/acceptance.py                 # the record files named in RECORD
    .venv/bin/python benchmarks/acceptance.py A.json B.json --json out.json
    .venv/bin/python benchmarks/acceptance.py --reading gate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metarec.evaluation.metrics import lower_is_better
from metarec.io import atomic_file

HERE = Path(__file__).resolve().parent
POOLED = HERE / "results" / "pooled"
# the record at the current defaults (RESULTS.md names each: issue 14's pooled sections)
RECORD = (
    POOLED / "head_8d32e71" / "curves_ml100k.json",
    POOLED / "curves_ml100k_melu_seeds0-9.json",
    POOLED / "curves_ml100k-quintile_seeds0-9.json",
    POOLED / "curves_ml100k-halfstar_seeds0-9.json",
    POOLED / "fallback" / "curves_ml100k-5to500_seeds0-9.json",
    POOLED / "curves_lowrank.json",
)
RANK = {"behind": 0, "behind~": 1, "ahead~": 2, "ahead": 3}
READINGS = ("point", "strict", "gate")
ZERO_SHOT_BASELINE = "item_mean"


def _sign(metric: str) -> float:
    """+1 where a larger value is better, -1 for error metrics: sign x difference > 0 is a gain."""
    return -1.0 if lower_is_better(metric) else 1.0


def _shots_order(k: str) -> tuple[bool, int]:
    """Support sizes in increasing order, "all" last (JSON keys sort as text)."""
    return (not k.isdigit(), int(k) if k.isdigit() else 0)


def standing(metric: str, diff: float, interval: list[float] | tuple[float, float]) -> str:
    """Candidate minus one baseline, classified (module docstring)."""
    lo, hi = float(interval[0]), float(interval[1])
    if lo > hi:
        raise ValueError(f"interval [{lo}, {hi}] of {metric} is reversed")
    sign = _sign(metric)
    gain, worst, best = sign * diff, min(sign * lo, sign * hi), max(sign * lo, sign * hi)
    if worst > 0:
        return "ahead"
    if best < 0:
        return "behind"
    return "ahead~" if gain > 0 else "behind~"


def _holds(k: str, each: dict[str, str], worst: str, reading: str) -> bool:
    """Whether a cell holds under ``reading`` (module docstring)."""
    if reading == "gate":
        return RANK[worst] >= RANK["ahead~" if k == "all" else "behind~"]
    if k == "0":
        if ZERO_SHOT_BASELINE not in each:
            raise ValueError(f"0 ratings: no difference to {ZERO_SHOT_BASELINE} in the record")
        return each[ZERO_SHOT_BASELINE] != "behind"
    return RANK[worst] >= RANK["ahead" if reading == "strict" else "ahead~"]


def cell(metric: str, k: str, entry: dict[str, Any], reading: str = "point") -> dict[str, Any]:
    """One (scenario, metric, k) of a pooled record: the standing against each baseline, the
    worst of them and whether the cell holds under ``reading``."""
    if reading not in READINGS:
        raise ValueError(f"reading {reading!r} is none of {', '.join(READINGS)}")
    vs = entry.get("vs")
    if not vs:
        raise ValueError(f"{metric}@{k}: no per-baseline differences ('vs') in the record")
    missing = sorted(b for b, d in vs.items() if d.get("interval") is None)
    if missing:
        raise ValueError(f"{metric}@{k}: no interval against {', '.join(missing)} "
                         "(the record was made with curves.py --bootstrap 0)")
    each = {b: standing(metric, d["diff"], d["interval"]) for b, d in vs.items()}
    worst_b = min(each, key=lambda b: (RANK[each[b]], _sign(metric) * vs[b]["diff"]))
    try:
        holds = _holds(k, each, each[worst_b], reading)
    except ValueError as exc:
        raise ValueError(f"{metric}@{k}: {exc}") from None
    return {"standing": each[worst_b], "against": worst_b, "diff": vs[worst_b]["diff"],
            "interval": list(vs[worst_b]["interval"]), "holds": holds, "each": each}


def _gap_closed(result: dict[str, Any]) -> dict[str, float] | None:
    curves = result.get("curves", {}).get("test", {})
    cand = curves.get(result.get("candidate", "ridge"), {}).get("all", {})
    gap = cand.get("gap_closed")
    return gap if isinstance(gap, dict) else None


def read(result: dict[str, Any], source: str, reading: str = "point") -> list[dict[str, Any]]:
    """Every (scenario, metric) line of one record."""
    lines = []
    for scenario, by_k in result["differences"].items():
        ks = sorted(by_k, key=_shots_order)
        metrics = sorted({m for k in ks for m in by_k[k]})
        for metric in metrics:
            cells = {k: cell(metric, k, by_k[k][metric], reading) for k in ks if metric in by_k[k]}
            lines.append({"dataset": result.get("dataset"), "protocol": result.get("protocol"),
                          "scenario": scenario, "metric": metric, "seeds": len(result["seeds"]),
                          "source": source, "cells": cells,
                          "holds": all(c["holds"] for c in cells.values())})
    return lines


def _fmt(c: dict[str, Any]) -> str:
    lo, hi = c["interval"]
    text = f"{c['standing']} {c['diff']:+.4f} [{lo:+.3f}, {hi:+.3f}] {c['against']}"
    return text if c["holds"] else f"**{text}**"


def to_markdown(lines: list[dict[str, Any]], gaps: dict[str, dict[str, float]],
                reading: str = "point") -> str:
    ks = sorted({k for line in lines for k in line["cells"]}, key=_shots_order)
    out = ["| dataset, scenario (seeds) | metric | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|---|" + "---|" * len(ks)]
    for line in lines:
        name = f"{line['dataset']} {line['protocol']}, {line['scenario']} ({line['seeds']})"
        out.append(f"| {name} | {line['metric']} | "
                   + " | ".join(_fmt(line["cells"][k]) if k in line["cells"] else "" for k in ks)
                   + " |")
    held = sum(c["holds"] for line in lines for c in line["cells"].values())
    total = sum(len(line["cells"]) for line in lines)
    out += ["", f"Cells that hold: {held} of {total}, reading {reading} (bold: it does not hold; "
            "each cell: standing, candidate minus the baseline it stands worst against, "
            "95% interval, that baseline)."]
    for name, gap in gaps.items():
        out.append(f"{name}: the candidate closes {gap['mean']:.1%} ({gap['min']:.1%} .. "
                   f"{gap['max']:.1%} over the seeds) of the item_mean -> oracle MAE gap at "
                   "full support.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="*", type=Path, help="curves.py result files (default: RECORD)")
    ap.add_argument("--reading", choices=READINGS, default="point",
                    help="what holds from 1 rating on: the point estimate ahead (point), the "
                         "interval ahead (strict), or the pipeline gate's paired_bootstrap rule")
    ap.add_argument("--strict", action="store_true", help="the same as --reading strict")
    ap.add_argument("--json", type=Path, help="also write the cells here")
    args = ap.parse_args(argv)
    if args.strict and args.reading not in ("point", "strict"):
        ap.error(f"--strict contradicts --reading {args.reading}")
    reading = "strict" if args.strict else args.reading
    lines, gaps = [], {}
    for path in args.records or RECORD:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            ap.error(f"cannot read the record {path}: {exc}")
        try:
            lines += read(result, str(path), reading)
        except (KeyError, ValueError) as exc:
            ap.error(f"the record {path} cannot be read as curves.py's result: {exc}")
        gap = _gap_closed(result)
        if gap is not None:
            gaps[str(result.get("dataset"))] = gap
    sys.stdout.write(to_markdown(lines, gaps, reading))
    if args.json:
        with atomic_file(args.json) as out:
            out.write(json.dumps({"reading": reading, "lines": lines, "gap_closed": gaps},
                                 indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
