"""The evaluation's output folder: report.json, report.md (with the gate's verdict once known)
and PNG plots, written atomically."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from metarec.evaluation.plots import plot_comparison, plot_curves
from metarec.evaluation.report import Report
from metarec.io import atomic_dir, atomic_file

if TYPE_CHECKING:
    from metarec.evaluation.gate import GateDecision

log = logging.getLogger(__name__)


def write_report(report: Report, out_dir: str | Path,
                 plot_metrics: tuple[str, ...] = ("mae", "ndcg_at_3")) -> dict[str, Path]:
    """Write report.json, report.md and PNG plots into ``out_dir`` atomically; return paths."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    out_dir = Path(out_dir)
    names: list[str] = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(report.to_json() + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        names += ["report.json", "report.md"]
        available = {n for by in report.metrics.values() for v in by.values() for n in v}
        for metric in plot_metrics:
            if metric not in available:
                log.warning("plot metric %s is not in the report; skipped", metric)
                continue
            if plot_curves(report, metric, tmp / f"adaptation_{metric}.png"):
                names.append(f"adaptation_{metric}.png")
            plot_comparison(report, metric, tmp / f"scenarios_{metric}.png")
            names.append(f"scenarios_{metric}.png")
    return {n: out_dir / n for n in names}


def write_verdict(report: Report, decision: "GateDecision", out_dir: str | Path) -> Path:
    """Rewrite ``out_dir``/report.md with the gate's verdict and reasons appended; its path."""
    dest = Path(out_dir) / "report.md"
    with atomic_file(dest) as fh:
        fh.write(report.to_markdown() + "\n" + decision.to_markdown())
    return dest
