"""The outcome of a study as a reviewed change: the report and params.tuned.yaml.

:func:`study_report` reads the study back: its best feasible trial beside the reference trial
(the current settings), with the paired difference of their per-user scores and its standard
error. :func:`write_overrides` writes the best trial's changed settings, and where they came
from as ``# name: value`` comments (read back by :mod:`metarec.config.overrides`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metarec.config import Config
from metarec.config.overrides import nest, read_overrides
from metarec.io import atomic_file
from metarec.tuning.cv import mean_se, paired
from metarec.tuning.objective import PER_TASK, REFERENCE, objective_shots
from metarec.tuning.space import current_values, decode_params

log = logging.getLogger(__name__)


@dataclass
class StudyReport:
    """The best trial beside the current settings (``reference``), by the study's metric."""

    study: str
    metric: str
    direction: str
    counts: dict[str, int]
    best: int | None = None
    best_value: float | None = None
    best_se: float | None = None
    reference: int | None = None
    reference_value: float | None = None
    reference_se: float | None = None
    difference: float | None = None      # best - reference, paired over held-out users
    difference_se: float | None = None
    tasks: int = 0
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # key, current, tuned
    best_params: dict[str, Any] = field(default_factory=dict)
    constraint: dict[str, Any] = field(default_factory=dict)
    trial_seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as text: the comparison, then one line per changed setting."""
        if self.best is None:
            return [f"study {self.study}: no feasible completed trial yet ({self.counts})"]
        out = [f"study {self.study}: {self.counts}",
               f"best trial {self.best}: cv {self.metric} {self.best_value:.5f} ± "
               f"{self.best_se:.5f}"]
        if self.reference_value is not None:
            out.append(f"current settings (trial {self.reference}): cv {self.metric} "
                       f"{self.reference_value:.5f} ± {self.reference_se:.5f}")
            out.append(f"paired difference (best - current) over {self.tasks} held-out users: "
                       f"{self.difference:+.5f} ± {self.difference_se:.5f}")
        if self.constraint:
            c = self.constraint
            out.append(f"constraint: {c['metric']} {c['value']:.4f} vs best baseline "
                       f"{c['baseline']} {c['baseline_value']:.4f}")
        out.append(f"{'setting':<28} {'current':>18} {'tuned':>18}")
        for key, cur, new in self.changes:
            out.append(f"{key:<28} {_fmt(cur):>18} {_fmt(new):>18}")
        if not self.changes:
            out.append("(the current settings are the best: nothing to change)")
        return out


def _fmt(value: Any) -> str:
    """A value as a reviewer reads it: floats to 4 significant digits (1.0 stays 1.0), the
    rest in YAML flow style."""
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 6 else f"{value:.4g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _complete(study) -> list:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def study_report(cfg: Config, study) -> StudyReport:
    """The report of ``study`` (an optuna.Study) for the base configuration ``cfg``."""
    from metarec.tuning.study import counts, direction

    report = StudyReport(cfg.tune.study, cfg.tune.objective.metric, direction(cfg), counts(study))
    done = _complete(study)
    seconds = [t.user_attrs.get("seconds") for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get("seconds") is not None]
    if seconds:
        report.trial_seconds = {"mean": float(np.mean(seconds)), "total": float(np.sum(seconds)),
                                "median": float(np.median(seconds))}
    try:
        best = study.best_trial
    except ValueError:  # nothing completed, or nothing feasible
        return report
    space = cfg.tune.space
    report.best, report.best_value = best.number, float(best.value)
    report.best_se = float(best.user_attrs.get("se", float("nan")))
    report.best_params = decode_params(best.params, space)
    report.constraint = best.user_attrs.get("constraint", {})
    current = current_values(cfg, space)
    report.changes = [(k, current[k], v) for k, v in report.best_params.items()
                      if v != current[k]]
    ref = next((t for t in done if t.user_attrs.get(REFERENCE)), None)
    if ref is not None:
        a, b = np.asarray(best.user_attrs[PER_TASK]), np.asarray(ref.user_attrs[PER_TASK])
        report.reference = ref.number
        report.reference_value, report.reference_se = mean_se(b)
        report.difference, report.difference_se = paired(a, b)
        report.tasks = len(a)
    return report


def render_overrides(cfg: Config, report: StudyReport, storage_label: str) -> str:
    """params.tuned.yaml's text: header comments, then the changed settings by section, each
    with its params.yaml value as a comment."""
    shots = ", ".join(str(s) for s in objective_shots(cfg))
    head = [
        "# Written by `metarec tune`: the best trial of an Optuna study, for review. To train",
        "# with it, set use_overrides to true in the tune section of params.yaml; the",
        "# training's MLflow run then records these overrides.",
        f"# study: {report.study}",
        f"# storage: {storage_label}",
        f"# trial: {report.best}",
        f"# cv_{report.metric}: {report.best_value:.5f} ± {report.best_se:.5f}",
        f"# folds: {cfg.tune.folds} folds, {report.tasks} held-out users, support sizes {shots}",
    ]
    if report.reference_value is not None:
        head += [f"# current_cv_{report.metric}: {report.reference_value:.5f} ± "
                 f"{report.reference_se:.5f} (trial {report.reference})",
                 f"# difference: {report.difference:+.5f} ± {report.difference_se:.5f} "
                 "(best - current, paired over held-out users)"]
    body: list[str] = []
    for section, values in nest({k: new for k, _, new in report.changes}).items():
        body.append(f"{section}:")
        for key, value in values.items():
            cur = next(c for k, c, _ in report.changes if k == f"{section}.{key}")
            body.append(f"  {key}: {_fmt(value) if not isinstance(value, float) else repr(value)}"
                        f"  # params.yaml: {_fmt(cur)}")
    if not body:
        body.append("# (no change: the current settings scored best)")
    return "\n".join(head + body) + "\n"


def write_overrides(cfg: Config, report: StudyReport, storage_label: str) -> Path:
    """Write ``tune.overrides_file`` atomically and check that it reads back to the best
    trial's changes."""
    if report.best is None:
        raise ValueError(f"study {report.study!r} has no feasible completed trial: nothing to "
                         "write")
    path = Path(cfg.tune.overrides_file)
    text = render_overrides(cfg, report, storage_label)
    with atomic_file(path, "w") as fh:
        fh.write(text)
    back = read_overrides(path).flat()
    expected = {k: new for k, _, new in report.changes}
    if back != expected:  # a value YAML would not round-trip: a bug here, not the user's
        raise RuntimeError(f"{path} reads back as {back}, expected {expected}")
    log.info("wrote %s (trial %s)", path, report.best)
    return path
