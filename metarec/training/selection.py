"""``model.head_factors: auto``: whether the ridge head reads the collaborative item factors,
chosen per dataset on its validation users.

The factor head (the ridge head fits each user's weights on ALS item factors from the support
set) is what closes over half of the low-rank variant's item_mean -> oracle gap, while on the
MovieLens-100K variants it costs a little at full support (4-fold CV, benchmarks/RESULTS.md):
no one setting holds across the suite, so the data at hand decides. The ridge learner is
trained twice, without and with the head, and the head is kept only when its validation error
(per validation task, at the support sizes early stopping uses) is lower by more than one
standard error of the paired difference: the one-standard-error rule, which keeps the simpler
model when the two are within noise (when either training kept its fallback early-stopping
criterion's weights, ``train.fallback_shots``, both are compared at those support sizes).
A training that never beat its starting point (best step 0 under both criteria) yields a model
the evaluation gate refuses (unless ``gate.allow_no_training_gain``); when the rule picks such a
candidate and the other one did meta-train, the untrained one is kept only when its error is
lower by more than two standard errors, else the trained one is (rule "trained over
untrained"): on splits where the untrained factor head is marginally ahead on the validation
users (ML-100K half-star ratings, one split of ten on one machine), the run would otherwise end
with no model although its other training learned.
Other learners, and models without item factors, have no head to choose: they train once,
without.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from metarec.config import ModelConfig
from metarec.models.estimator import resolve_head_factors

AUTO = "auto"
T = TypeVar("T")


def candidates(model_cfg: ModelConfig, learner: str) -> list[ModelConfig]:
    """The model settings to train: ``model_cfg`` itself when ``head_factors`` is decided,
    else without the head and (ridge with item factors only) with it, in that order."""
    if model_cfg.head_factors != AUTO:
        return [model_cfg]
    off = resolve_head_factors(model_cfg, False)
    if learner != "ridge" or model_cfg.item_factors <= 0:
        return [off]
    return [off, resolve_head_factors(model_cfg, True)]


@dataclass(frozen=True)
class HeadChoice:
    """What the rule saw and chose: the mean validation error of each candidate, the mean
    paired difference (with minus without) and its standard error over the validation tasks."""

    head_factors: bool
    error_without: float
    error_with: float
    difference: float
    standard_error: float
    tasks: int
    # the validation error compared: "valid_shots", or "fallback_shots" when a candidate's
    # weights were chosen by the fallback criterion (train.fallback_shots)
    criterion: str = "valid_shots"
    # "one standard error", or "trained over untrained" (see the module docstring)
    rule: str = "one standard error"

    def to_dict(self) -> dict[str, float | int | bool | str]:
        return {"head_factors": self.head_factors, "error_without": round(self.error_without, 5),
                "error_with": round(self.error_with, 5), "difference": round(self.difference, 5),
                "standard_error": round(self.standard_error, 5), "tasks": self.tasks,
                "rule": self.rule, "criterion": self.criterion}


def one_se_rule(without: np.ndarray, with_head: np.ndarray) -> HeadChoice:
    """Keep the head when the paired per-task difference ``with_head - without`` has a mean
    below minus one standard error; tasks where either error is NaN are left out."""
    a, b = np.asarray(without, float), np.asarray(with_head, float)
    if a.shape != b.shape:
        raise ValueError(f"paired errors need one value per task each, got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    n = int(ok.sum())
    if n < 2:
        raise ValueError(f"choosing model.head_factors needs >= 2 validation tasks with an "
                         f"error, got {n}")
    d = b[ok] - a[ok]
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    return HeadChoice(head_factors=mean < -se, error_without=float(a[ok].mean()),
                      error_with=float(b[ok].mean()), difference=mean, standard_error=se,
                      tasks=n)


def select(options: list[ModelConfig], fit: Callable[[ModelConfig], T],
           errors: Callable[[T], np.ndarray],
           fallback_errors: Callable[[T], np.ndarray] | None = None,
           fell_back: Callable[[T], bool] = lambda t: False,
           untrained: Callable[[T], bool] = lambda t: False,
           ) -> tuple[T, ModelConfig, HeadChoice | None]:
    """Train each of ``options`` (from :func:`candidates`) with ``fit``; with two, score both
    with ``errors`` (per validation task) and keep the one :func:`one_se_rule` picks.
    When either training kept the weights its fallback criterion chose (``fell_back``), both
    are scored with ``fallback_errors`` instead: the first criterion is the one that saw no
    gain over the start, and on it an untrained candidate would win by construction. When the
    rule picks a training that never beat its start (``untrained``) over one that did, the
    trained one is kept unless the untrained one is lower by more than two standard errors.
    Returns the kept training, its settings and the choice (None: nothing to choose)."""
    if len(options) == 1:
        return fit(options[0]), options[0], None
    if len(options) != 2 or options[0].head_factors or not options[1].head_factors:
        raise ValueError("select() takes one setting, or two: without the head, then with it")
    trained = [fit(m) for m in options]
    criterion = "valid_shots"
    if fallback_errors is not None and any(fell_back(t) for t in trained):
        errors, criterion = fallback_errors, "fallback_shots"
    choice = one_se_rule(errors(trained[0]), errors(trained[1]))
    choice = dataclasses.replace(choice, criterion=criterion)
    keep = int(choice.head_factors)
    if untrained(trained[keep]) and not untrained(trained[1 - keep]):
        lead = -choice.difference if keep else choice.difference  # the kept one's advantage
        if lead <= 2 * choice.standard_error:
            keep = 1 - keep
            choice = dataclasses.replace(choice, head_factors=bool(keep),
                                         rule="trained over untrained")
    return trained[keep], options[keep], choice
