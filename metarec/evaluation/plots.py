"""PNG plots of a report: adaptation curves and the per-scenario comparison of methods.

matplotlib is imported inside each function (an optional, heavy dependency); the caller selects
a headless backend (:func:`metarec.evaluation.output.write_report` does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metarec.evaluation.report import Report


def plot_curves(report: Report, metric: str, dest: Path) -> bool:
    """PNG of ``metric`` against support size, one panel per scenario; False when no curves."""
    import matplotlib.pyplot as plt

    scenarios = [s for s, by in report.curves.items() if by]
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.6),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        labels = report.shots(scenario)
        for method, curve in report.curves[scenario].items():
            ax.plot(range(len(labels)), [curve.get(k, {}).get(metric, np.nan) for k in labels],
                    marker="o", lw=2.2 if method == report.candidate else 1.2, label=method)
            ax.set_xticks(range(len(labels)), labels)
        ax.set_title(scenario)
        ax.set_xlabel("support ratings")
        ax.set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return True


def plot_comparison(report: Report, metric: str, dest: Path) -> None:
    """PNG bar chart of ``metric`` per scenario and method, bootstrap intervals as error bars."""
    import matplotlib.pyplot as plt

    scenarios = list(report.metrics)
    methods = sorted({m for by in report.metrics.values() for m in by})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(scenarios) * 1.5), 3.8))
    for i, method in enumerate(methods):
        vals = [report.metrics[s].get(method, {}).get(metric, np.nan) for s in scenarios]
        ivs = [report.intervals.get(s, {}).get(method, {}).get(metric) for s in scenarios]
        err = np.array([[v - iv[0], iv[1] - v] if iv else [0.0, 0.0]
                        for v, iv in zip(vals, ivs)]).T
        ax.bar(np.arange(len(scenarios)) + i * width, vals, width, yerr=err, label=method,
               capsize=2)
    ax.set_xticks(np.arange(len(scenarios)) + width * (len(methods) - 1) / 2, scenarios)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
