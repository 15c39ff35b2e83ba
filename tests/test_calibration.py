"""The prior's calibration after meta-training (metarec.training.calibration): the shift is the
per-user mean 0-shot residual of the training users within the rating window, only those users
count, it moves nothing but the output bias, every learner's 0-shot residual is then centred,
and implicit tasks are left alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metarec.config import TrainConfig
from metarec.data.arrays import TaskArrays, limit_support
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.calibration import calibrate_prior, prior_shift, protocol_kind
from metarec.training.loop import meta_train, predict
from tests.test_fast_step import LEARNERS, implicit_arrays
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks

CFG = TrainConfig(lr=1e-2, tasks_per_batch=4, max_steps=6, eval_every=3, patience=100,
                  checkpoint_every=0, device="cpu", progress=False)


def _model(name: str = "ridge", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_features(), TINY)
    return model, build_learner(model, plain_meta(**LEARNERS[name]))


def _predict(model, learner):
    return lambda t: predict(model, learner, t, CFG)


def _with_heavy(tasks: TaskArrays, heavy: np.ndarray, rating: float | None = None) -> TaskArrays:
    """``tasks`` whose rows ``heavy`` fill the support width (users beyond the window), their
    query ratings set to ``rating`` when given."""
    out = TaskArrays(**{k: v.copy() if isinstance(v, np.ndarray) else v
                        for k, v in tasks.__dict__.items()})
    out.support_mask[heavy] = True
    out.support_ratings[heavy] = np.where(out.support_ratings[heavy] > 0,
                                          out.support_ratings[heavy], 3.0)
    if rating is not None:
        out.query_ratings[heavy] = np.where(out.query_mask[heavy], rating, 0.0)
    return out


def test_protocol_kind_is_the_tasks_below_the_width_or_all_when_none_is() -> None:
    tasks = tiny_tasks(0, n=8, support=6)
    tasks.support_mask[:] = np.arange(6)[None] < np.array([6, 2, 6, 1, 3, 6, 5, 4])[:, None]
    assert protocol_kind(tasks).tolist() == [False, True, False, True, True, False, True, True]
    tasks.support_mask[:] = True
    assert protocol_kind(tasks).all()


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_shift_is_the_mean_per_user_zero_shot_residual_of_window_users(name: str) -> None:
    model, learner = _model(name)
    heavy = np.array([0, 3, 5])
    tasks = _with_heavy(tiny_tasks(2, n=12, support=6), heavy)
    window = np.setdiff1d(np.arange(12), heavy)
    zero = limit_support(tasks.subset(window), 0, seed=0)
    pred = predict(model, learner, zero, CFG)
    m = zero.query_mask.astype(np.float64)
    want = np.mean(((zero.query_ratings - pred) * m).sum(1) / m.sum(1))
    assert prior_shift(tasks, _predict(model, learner)) == pytest.approx(want, abs=1e-6)
    # heavy users do not count, whatever they rate
    louder = _with_heavy(tasks, heavy, rating=5.0)
    assert prior_shift(louder, _predict(model, learner)) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_calibration_moves_only_the_output_bias_and_centres_the_prior(name: str) -> None:
    model, learner = _model(name)
    tasks = _with_heavy(tiny_tasks(4, n=16, support=6), np.array([1, 2]), rating=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shift = calibrate_prior(model, tasks, _predict(model, learner))
    assert shift is not None and abs(shift) > 1e-3
    after = model.state_dict()
    bias = "decision.%d.bias" % (len(model.decision) - 1)
    assert bias in after
    for k, v in after.items():
        if k == bias:
            torch.testing.assert_close(v, before[k] + shift)
        else:
            assert torch.equal(v, before[k]), k
    assert prior_shift(tasks, _predict(model, learner)) == pytest.approx(0.0, abs=1e-5)


def test_meta_train_calibrates_when_asked_and_records_the_shift() -> None:
    train = _with_heavy(tiny_tasks(0, n=20), np.arange(0, 20, 3), rating=1.0)
    valid = tiny_tasks(1, n=6)
    runs = {}
    for on in (True, False):
        model, learner = _model("ridge")
        result = meta_train(model, learner, train, valid,
                            dataclasses.replace(CFG, calibrate_prior=on), seed=3)
        runs[on] = (result, model)
    (on, m_on), (off, _) = runs[True], runs[False]
    assert off.prior_shift is None and on.prior_shift is not None
    assert on.history == off.history  # the same training; calibrated once, after it
    bias = "decision.%d.bias" % (len(m_on.decision) - 1)
    torch.testing.assert_close(on.model_state[bias], off.model_state[bias] + on.prior_shift)
    torch.testing.assert_close(m_on.state_dict()[bias], on.model_state[bias])
    for k, v in off.model_state.items():
        if k != bias:
            assert torch.equal(v, on.model_state[k]), k


def test_implicit_tasks_are_left_alone() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    learner = build_learner(model, plain_meta(learner="ridge", loss="bce"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = implicit_arrays(0, 10)
    assert prior_shift(tasks, _predict(model, learner)) is None
    assert calibrate_prior(model, tasks, _predict(model, learner)) is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
