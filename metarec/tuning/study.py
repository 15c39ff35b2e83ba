"""Running an Optuna study of the cross-validated objective, on one machine or many.

The study lives in Optuna's RDB storage (``tune.storage``: a SQLite file by default, PostgreSQL
for workers on several machines). The process that creates it records the search space and
opens the study's MLflow run, then enqueues the *reference* trial: the current settings, so the
best trial is always compared, user by user, with what params.yaml trains today. Each worker
then runs trials until the study holds ``tune.n_trials`` of them (every worker together);
a trial whose worker died is failed by the heartbeat and run again by another worker.

Same seed and a fresh storage give the same sequence of trials on the CPU: the sampler is
seeded with ``tune.seed`` (else the top-level seed) plus the trials already in the study, and
a worker adds its host and process id so that parallel workers do not draw alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from metarec.config import Config
from metarec.evaluation.metrics import lower_is_better
from metarec.tuning.cv import load_cv_inputs, make_folds, pool_tasks
from metarec.tuning.objective import (REFERENCE, Objective, fold_baselines,
                                      objective_shots)
from metarec.tuning.space import reference_params
from metarec.tuning.tracking import (STUDY_RUN_ATTR, TrialLogger, open_study_run, redact,
                                     study_run_id)

log = logging.getLogger(__name__)

COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")  # trial states that use up n_trials
SCHEMA_ATTEMPTS = 5  # tries to open a storage whose tables another worker is creating
SCHEMA_LOCK = zlib.crc32(b"metarec.tune.optuna-schema")  # PostgreSQL advisory lock key


@dataclass
class WorkerResult:
    """What one worker did: the trials it ran and the study's counts afterwards."""

    study: str
    storage: str
    ran: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    baseline_seconds: float = 0.0
    mlflow_run_id: str | None = None


def storage(cfg: Config, url: str | None = None):
    """Optuna's RDB storage at ``url`` (default ``tune.storage``), with worker heartbeats; a
    SQLite file's folder is created.

    Workers started together on an empty database race to create Optuna's tables. On
    PostgreSQL they take turns under an advisory lock; elsewhere (and should the lock not be
    had) the loser of the race, which sees "already exists", retries and finds the tables."""
    import time
    import warnings

    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = url or cfg.tune.storage
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings(), _schema_lock(url):
                # heartbeats: "experimental" since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=cfg.tune.heartbeat_s,
                                  grace_period=2 * cfg.tune.heartbeat_s,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                      max_retry=1))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # PostgreSQL: DuplicateTable / DuplicateObject ("studydirection already exists",
            # a ProgrammingError) or a unique violation on its catalog (an IntegrityError).
            if not _schema_race(exc) or attempt == SCHEMA_ATTEMPTS - 1:
                raise
            log.info("storage schema being created by another worker; retrying")
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _schema_race(exc: Exception) -> bool:
    """Whether ``exc`` is another worker having created Optuna's tables first."""
    import sqlalchemy.exc

    text = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock (one key for every metarec worker) while
    Optuna checks and creates its tables, so workers opening an empty database take turns;
    elsewhere, nothing. The lock ends with its connection, so a killed worker leaves none."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                             {"key": SCHEMA_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def _seed(cfg: Config, existing: int, worker: bool) -> int:
    seed = (cfg.tune.seed if cfg.tune.seed is not None else cfg.seed) + existing
    if worker:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return seed % 2**32


def _sampler(cfg: Config, seed: int):
    import optuna

    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(cfg: Config):
    import optuna

    if cfg.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.pruner_startup_trials,
                                           n_warmup_steps=0)
    if cfg.tune.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


def direction(cfg: Config) -> str:
    return "minimize" if lower_is_better(cfg.tune.objective.metric) else "maximize"


def open_study(cfg: Config, url: str | None = None, worker: bool = False):
    """Create the study (space, settings, MLflow run, reference trial) or join it."""
    import optuna

    store = storage(cfg, url)
    name = cfg.tune.study
    try:
        study = optuna.create_study(study_name=name, storage=store, direction=direction(cfg))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store)
        created = False
    if not created:
        _check_same_study(cfg, study)
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(cfg, _seed(cfg, existing, worker))
    study.pruner = _pruner(cfg)
    if created:
        _set_up(cfg, study, redact(url or cfg.tune.storage))
    return study


def _study_settings(cfg: Config) -> dict[str, Any]:
    """What makes trials of one study comparable (checked when a worker joins)."""
    t = cfg.tune
    return {"space": json.dumps({k: dataclasses.asdict(v) for k, v in t.space.items()},
                                sort_keys=True),
            "objective": json.dumps(dataclasses.asdict(t.objective), sort_keys=True),
            "folds": t.folds, "max_steps": t.max_steps or cfg.train.max_steps,
            "seed": cfg.seed, "data": cfg.data.dataset, "tasks": cfg.tasks.out_dir}


def _check_same_study(cfg: Config, study) -> None:
    stored = study.user_attrs.get("settings")
    mine = _study_settings(cfg)
    if stored is not None and stored != mine:
        diff = sorted(k for k in mine if stored.get(k) != mine[k])
        raise ValueError(f"study {cfg.tune.study!r} was created with other settings ({diff}); "
                         "name a new study (tune.study) or use the same params")


def _set_up(cfg: Config, study, storage_label: str) -> None:
    settings = _study_settings(cfg)
    study.set_user_attr("settings", settings)
    run_id = open_study_run(cfg.tracking, cfg.tune.study, {
        **{f"tune.{k}": v for k, v in settings.items()}, "tune.n_trials": cfg.tune.n_trials,
        "tune.pruner": cfg.tune.pruner, "tune.sampler": cfg.tune.sampler},
        {"optuna.storage": storage_label})
    study.set_user_attr(STUDY_RUN_ATTR, run_id)
    study.enqueue_trial(reference_params(cfg, cfg.tune.space), user_attrs={REFERENCE: True})


def counts(study) -> dict[str, int]:
    """Trials of the study by state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _used(study) -> tuple[int, int]:
    """Trials that use up ``n_trials`` (a dead worker's trial that was queued again counts
    once, as its retry), and trials queued to run."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    used = sum(1 for t in trials if t.state.name in COUNTED and t.number not in retried)
    return used, sum(1 for t in trials if t.state.name == "WAITING")


def run_worker(cfg: Config, url: str | None = None, worker: bool = False,
               max_trials: int | None = None) -> WorkerResult:
    """Run trials of the study until it holds ``tune.n_trials`` (all workers together) and
    none is queued, the timeout passes, or this process ran ``max_trials``. ``cfg`` is the base configuration
    (params.yaml without overrides); only the training and validation users are loaded."""
    import time

    if cfg.tune.n_trials < 1:
        raise ValueError(f"tune.n_trials must be >= 1, got {cfg.tune.n_trials}")
    reference_params(cfg, cfg.tune.space)  # the current settings must be a point of the space
    study = open_study(cfg, url, worker)
    inputs = load_cv_inputs(cfg)
    folds = make_folds(pool_tasks(inputs), cfg.tune.folds, objective_shots(cfg), cfg.seed)
    baselines = fold_baselines(cfg, inputs.features, folds, inputs.manifest)
    parent = study_run_id(study)
    logger = TrialLogger(cfg.tracking, parent, cfg.tune.study)
    objective = Objective(cfg, inputs.features, folds, baselines, logger.on_fold, logger.on_end)
    result = WorkerResult(cfg.tune.study, redact(url or cfg.tune.storage),
                          baseline_seconds=baselines.seconds, mlflow_run_id=parent)
    deadline = None if cfg.tune.timeout_s is None else time.monotonic() + cfg.tune.timeout_s

    def one_trial(trial) -> float:
        result.ran.append(trial.number)
        return objective(trial)

    while max_trials is None or len(result.ran) < max_trials:
        # Queued trials run even past n_trials: the retry of a dead worker's trial is one.
        used, waiting = _used(study)
        if (used >= cfg.tune.n_trials and not waiting) or (
                deadline is not None and time.monotonic() > deadline):
            break
        # One trial per call: optimize() keeps this worker's heartbeat while it runs and
        # fails the stale trials of dead workers first; diverged or refused settings fail,
        # the study goes on.
        study.optimize(one_trial, n_trials=1, catch=(FloatingPointError, ValueError))
        done = next(t for t in study.get_trials(deepcopy=False) if t.number == result.ran[-1])
        log.info("trial %d: %s (%s)", done.number, done.state.name, done.value)
    result.counts = counts(study)
    return result
