"""Hyperparameter search: an Optuna study over cross-validated cold-start tasks.

- :mod:`~metarec.tuning.cv`: folds of the training + validation users (test users are never
  loaded), training a learner or the baselines on a fold, per-user scores;
- :mod:`~metarec.tuning.space`: ``tune.space`` as Optuna distributions, a trial's settings laid
  over the Config;
- :mod:`~metarec.tuning.objective`: a trial's cross-validated score, reported fold by fold to
  the pruner, with its constraint against the best baseline;
- :mod:`~metarec.tuning.study`: the study in Optuna's RDB storage, one worker's loop;
- :mod:`~metarec.tuning.tracking`: the study's MLflow run and each trial's nested run;
- :mod:`~metarec.tuning.overrides`: the report (best vs current, paired) and
  ``params.tuned.yaml``.

The stage that strings these together is :func:`metarec.pipeline.tune.tune_study`.
"""
