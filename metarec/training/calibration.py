"""The prior's calibration: the 0-shot prediction set on the users the model is evaluated on.

Meta-training draws its tasks from every training user, and users with more than
``tasks.max_ratings`` ratings train too (their support subsampled to the task width). The
evaluation protocols, the tuning folds and a new user at serving time are of the other kind:
users within ``min_ratings..max_ratings``. The two populations rate differently: on ML-100K the
heavy users' ratings sit 0.05 below the item means, the others' 0.03 above, and heavy users are
44% of the training tasks, so the meta-learned output bias, the prior a user without ratings
gets, lands between the two, below the users it serves.

:func:`prior_shift` measures that offset after meta-training on the training users of the
protocol's kind (support not filling the width): the mean over those users of their mean query
residual at 0 shots (each user weighs the same, as in the per-user metrics).
:func:`calibrate_prior` adds it to the decision MLP's output bias. That bias is the 0-shot
prediction's constant and the prior every learner adapts from (the ridge head's w0, the
gradient learners' starting point), so the whole adaptation curve moves with it, by less as a
user's support grows; the export and serving read it from the state as before.

The global and finetune baselines' network is trained by the same loop and so calibrated the
same way (``train.calibrate_prior`` applies to every network ``meta_train`` trains): the
comparison stays like for like. Only the training users are read (never the validation or test users), one scalar is fitted
(on ~470 users on ML-100K), and the item offsets, the weights and the ranking within a user are
untouched. Implicit tasks are left alone: their scores are logits of sampled negatives and
positives, whose share the output bias was started at (``init_output_bias``).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from metarec.data.arrays import TaskArrays, limit_support
from metarec.models.estimator import Estimator

log = logging.getLogger(__name__)

Predict = Callable[[TaskArrays], np.ndarray]  # tasks -> (N, Q) adapted query scores


def protocol_kind(tasks: TaskArrays) -> np.ndarray:
    """(N,) bool: the tasks whose support does not fill the width (users within the rating
    window; the others, with ``max_ratings`` ratings or more, were subsampled). When every task
    fills it (a width below every user's ratings), all of them."""
    kind = ~tasks.support_mask.astype(bool).all(1)
    return kind if kind.any() else np.ones(len(tasks), bool)


def prior_shift(tasks: TaskArrays, predict: Predict) -> float | None:
    """The mean over the protocol's kind of users in ``tasks`` of their mean 0-shot query
    residual (rating minus ``predict`` with the support emptied); None for implicit tasks or
    when no task has a query rating."""
    if tasks.implicit:
        return None
    rows = np.nonzero(protocol_kind(tasks))[0]
    zero = limit_support(tasks.subset(rows), 0, seed=0)
    mask = zero.query_mask.astype(np.float64)
    counts = mask.sum(1)
    if not (counts > 0).any():
        return None
    pred = np.asarray(predict(zero), dtype=np.float64)
    per_user = ((zero.query_ratings - pred) * mask).sum(1)[counts > 0] / counts[counts > 0]
    return float(per_user.mean())


@torch.no_grad()
def calibrate_prior(model: Estimator, tasks: TaskArrays, predict: Predict) -> float | None:
    """Add :func:`prior_shift` of ``tasks`` (the training tasks; ``predict``: the model with its
    learner) to the model's output bias; returns the shift (None: nothing changed)."""
    shift = prior_shift(tasks, predict)
    if shift is None:
        return None
    if not np.isfinite(shift):
        raise ValueError(f"the prior's calibration shift is {shift}: the model's 0-shot "
                         f"predictions are not finite")
    model.decision[-1].bias.add_(shift)
    log.info("prior calibrated on %d training users of the protocol's kind: output bias %+.4f",
             int(protocol_kind(tasks).sum()), shift)
    return shift
