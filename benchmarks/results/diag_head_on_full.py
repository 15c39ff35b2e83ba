"""Early stopping on the curve, the factor-head choice on full support: ``benchmarks/cv_tune.py``
(same arguments) with ``model.head_factors: auto`` comparing its two candidates on each
validation task's full-support error only, whatever ``train.valid_shots`` early stopping uses.

Why: with ``train.valid_shots: [0, 1, 3, 5, 10, all]`` (curve-averaged early stopping) the CV
of 5to500 lost 0.001..0.003 MAE from k=3, which an earlier reading put on the head choice (made
on the curve too), while the curve-averaged stopping is what would make 5to500 seed 2's
meta-training count. Result: the same CV to the fourth decimal (the head stays off in every
fold), so the choice was not the cause. Not part of metarec: the loop's
``task_errors`` is patched in this process for the head choice only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_head_on_full.py --folds 3 \
        --learners ridge --dataset ml100k-5to500 --set "train.valid_shots=[0,1,3,5,10,all]" \
        --work-dir artifacts/bench_hf55 --out cv_valid_curve_head_full_5to500.json
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metarec.training.loop as loop  # noqa: E402

_task_errors = loop.task_errors


def task_errors_full(model, learner, tasks, cfg):
    return _task_errors(model, learner, tasks, dataclasses.replace(cfg, valid_shots=("all",)))


loop.task_errors = task_errors_full
import cv_tune  # noqa: E402

sys.exit(cv_tune.main(sys.argv[1:]))
