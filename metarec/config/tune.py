"""The ``tune`` section of params.yaml: the hyperparameter search (metarec.tuning).

Its own module so that sections.py stays one screen per section; ``Config.tune`` is declared
there like every other section. The search space is keyed by the dotted path of the setting
it varies (``meta.inner_lr``); the loader checks each key and each bound against the
:class:`~metarec.config.sections.Config` it would change, so a typo is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ParamRange:
    """One dimension of the search space.

    ``float``/``int``: uniform over [low, high] (``step``: on that grid); ``log-float``:
    log-uniform over [low, high] (low > 0); ``categorical``: one of ``choices`` (any value the
    setting accepts, lists included: ``[[64, 64], [128, 128]]`` for ``model.hidden``).
    """

    type: Literal["float", "log-float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TuneObjective:
    """What a trial scores: ``metric`` over the held-out folds (lower is better for mae/rmse,
    higher for the ranking metrics), averaged over the support sizes ``shots`` of the
    adaptation curve (empty: every ``evaluation.curve_shots`` size plus ``all``). A trial
    whose ``constraint_metric`` (same sizes) is worse than the best of ``constraint_baselines``
    by more than ``constraint_margin`` is infeasible: never chosen as best."""

    metric: str = "mae"
    shots: tuple[int | Literal["all"], ...] = ()
    constraint_metric: str | None = "ndcg_at_3"
    constraint_baselines: tuple[str, ...] = ("user_mean", "item_mean", "global", "finetune")
    constraint_margin: float = 0.0


def _default_space() -> dict[str, ParamRange]:
    return {
        "meta.learner": ParamRange("categorical", choices=("ridge", "metasgd", "fomaml")),
        "meta.inner_steps": ParamRange("int", low=1, high=3),
        "meta.inner_lr": ParamRange("log-float", low=1e-3, high=1e-1),
        "meta.ridge_lambda": ParamRange("log-float", low=0.1, high=10.0),
        "meta.ridge_bias_lambda": ParamRange("log-float", low=0.3, high=100.0),
        "meta.rank_loss_weight": ParamRange("float", low=0.0, high=2.0),
        "meta.ridge_size_power": ParamRange("categorical", choices=(False, True)),
        "model.embedding_dim": ParamRange("categorical", choices=(16, 32, 64)),
        "model.hidden": ParamRange("categorical", choices=([32, 32], [64, 64], [128, 128])),
        "model.item_debias": ParamRange("categorical", choices=(0, 5)),
        "train.lr": ParamRange("log-float", low=5e-5, high=2e-3),
        "train.weight_decay": ParamRange("log-float", low=1e-3, high=0.3),
    }


@dataclass(frozen=True)
class TuneConfig:
    """The Optuna study of `metarec tune` (metarec.tuning)."""

    # Study name and Optuna RDB storage: a SQLite file by default; a PostgreSQL URL
    # (postgresql+psycopg2://user@host/db) lets workers on several machines share one study.
    study: str = "metarec"
    storage: str = "sqlite:///artifacts/tune/optuna.db"
    # Trials in the whole study (every worker together), and a wall-clock limit per process.
    n_trials: int = 40
    timeout_s: float | None = None
    # tpe (Optuna's default sampler) | random; seed null: the top-level seed.
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = None
    # Stop a trial after a fold whose running score is worse than the median of earlier
    # trials at that fold (median), or by successive halving over folds (halving); none.
    pruner: Literal["median", "halving", "none"] = "median"
    pruner_startup_trials: int = 5
    # Cross-validation: folds of the training + validation users (test users are never read),
    # and the trial budget: train.max_steps of every trial (null: train.max_steps).
    folds: int = 4
    max_steps: int | None = None
    # Seconds between a worker's heartbeats; a trial whose worker went silent for 2x this long
    # is failed and run again by another worker.
    heartbeat_s: int = 60
    objective: TuneObjective = field(default_factory=TuneObjective)
    space: dict[str, ParamRange] = field(default_factory=_default_space)
    out_dir: str = "artifacts/tune"
    # The best trial's settings, written for review; every command trains with them only when
    # the file exists and use_overrides is true.
    overrides_file: str = "params.tuned.yaml"
    use_overrides: bool = False
