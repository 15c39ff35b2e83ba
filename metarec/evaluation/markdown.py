"""report.md: the markdown view of a :class:`~metarec.evaluation.report.Report`.

Per scenario: the full-support table (methods x metrics, bootstrap intervals in brackets), the
cold-start curve (each curve metric at every support size) and the paired differences to each
baseline with their intervals; then the training and data notes. The gate's verdict is appended
by :func:`metarec.evaluation.output.write_verdict` once it is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metarec.evaluation.report import Report


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(head), "|" + "---|" * len(head), *map(_row, rows), ""]


def _full_support(report: "Report", scenario: str) -> list[str]:
    by_method = report.metrics[scenario]
    names = sorted({n for vals in by_method.values() for n in vals})
    rows = []
    for method, vals in by_method.items():
        cells = [f"**{method}**" if method == report.candidate else method]
        for n in names:
            iv = report.intervals.get(scenario, {}).get(method, {}).get(n)
            cells.append(f"{vals.get(n, float('nan')):.4f}"
                         + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""))
        rows.append(cells)
    return _table(["method", *names], rows)


def _metrics_of(report: "Report", by_method: dict) -> list[str]:
    """The curve metrics: as configured, else those found in ``{method: {k: {metric: _}}}``."""
    return list(report.curve_metrics) or sorted(
        {m for by_k in by_method.values() for v in by_k.values() for m in v})


def _curve(report: "Report", scenario: str) -> list[str]:
    curves = report.curves.get(scenario, {})
    if not curves:
        return []
    shots, metrics = report.shots(scenario), _metrics_of(report, curves)
    rows = [[metric, f"**{method}**" if method == report.candidate else method,
             *(f"{curve.get(k, {}).get(metric, float('nan')):.4f}" for k in shots)]
            for metric in metrics for method, curve in curves.items()]
    return ["### Cold-start curve (metric at k support ratings)", "",
            *_table(["metric", "method", *shots], rows)]


def _differences(report: "Report", scenario: str) -> list[str]:
    by_base = report.curve_differences.get(scenario, {})
    if not by_base:
        return []
    shots, metrics = report.shots(scenario), _metrics_of(report, by_base)
    rows = []
    for metric in metrics:
        for base, by_k in by_base.items():
            cells = []
            for k in shots:
                d = by_k.get(k, {}).get(metric)
                text = "-" if d is None else f"{d.diff:+.4f}" + (
                    "" if d.interval is None else
                    f" [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}]")
                cells.append(f"**{text}**" if d is not None and d.excludes_zero() else text)
            rows.append([metric, base, *cells])
    return [f"### {report.candidate} minus each baseline (paired bootstrap)", "",
            *_table(["metric", "baseline", *shots], rows),
            "Bold: the interval excludes 0. mae: negative is better; ranking metrics: "
            "positive is better.", ""]


def _notes(report: "Report") -> list[str]:
    lines: list[str] = []
    if report.meta_training_gain is not None:
        t = report.training
        detail = (f"best validation MAE {t.get('best_valid_mae', float('nan')):.4f} at step "
                  f"{t.get('best_step')} of {t.get('steps')}")
        lines += ["## Meta-training", "",
                  (f"meta_training_gain: true ({detail})." if report.meta_training_gain else
                   f"**meta_training_gain: false**: meta-training never beat its starting point "
                   f"({detail}); the gate refuses it unless gate.allow_no_training_gain."), ""]
    if report.dropped:
        lines += ["## Data dropped before the tasks", "",
                  *_table(["rule", "users", "ratings"],
                          [[r, str(c["users"]), str(c["ratings"])]
                           for r, c in report.dropped.items()])]
    return lines


def report_markdown(report: "Report") -> str:
    """The whole report.md text of ``report``."""
    lines = [f"# Evaluation: {report.candidate}", ""]
    for scenario in report.metrics:
        counts = report.counts.get(scenario, {}).get(report.candidate, {})
        lines += [f"## {scenario}" + (f" ({counts.get('n_tasks')} tasks)" if counts else ""),
                  "", *_full_support(report, scenario), *_curve(report, scenario),
                  *_differences(report, scenario)]
    lines += _notes(report)
    resamples = f", {report.bootstrap_samples} resamples" if report.bootstrap_samples else ""
    lines.append(f"Intervals: {report.ci_level:.0%} percentile bootstrap over tasks{resamples}; "
                 "differences resample the same tasks for both methods. "
                 "mae/rmse: lower is better; ranking metrics: higher is better.")
    return "\n".join(lines) + "\n"
