"""The training loop: exact resume, early stopping, callbacks, predict, baselines, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.config import TrainConfig
from metarec.training.baselines import train_baselines
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.loop import CHECKPOINT, meta_train, predict, resolve_device
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks

CFG = TrainConfig(lr=1e-2, tasks_per_batch=4, max_steps=8, eval_every=2, patience=100,
                  checkpoint_every=3, device="cpu", progress=False, eval_batch=4)
META = plain_meta(learner="metasgd", inner_steps=1, inner_lr=0.05)


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_features(), TINY)
    return model, build_learner(model, META)


class Interrupt(Exception):
    pass


def _crash_and_resume(cfg: TrainConfig, train, valid, checkpoint_dir):
    """A run interrupted after step 5 (past the step-3 checkpoint), then resumed from its
    checkpoint with differently initialised weights; returns the resumed run's result."""
    def crash(step: int, metrics: dict) -> None:
        if step == 5 and "train_loss" in metrics:
            raise Interrupt

    with pytest.raises(Interrupt):
        meta_train(*_fresh(), train, valid, cfg, seed=7, callbacks=[crash],
                   checkpoint_dir=checkpoint_dir)
    return meta_train(*_fresh(seed=123), train, valid, cfg, seed=7,
                      checkpoint_dir=checkpoint_dir, resume=True)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path) -> None:
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)
    model, learner = _fresh()
    full = meta_train(model, learner, train, valid, CFG, seed=7)

    def crash(step: int, metrics: dict) -> None:
        if step == 5 and "train_loss" in metrics:
            raise Interrupt  # after the step-3 checkpoint, mid-way to the next
    model, learner = _fresh()
    with pytest.raises(Interrupt):
        meta_train(model, learner, train, valid, CFG, seed=7, callbacks=[crash],
                   checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT).exists()
    model, learner = _fresh(seed=123)  # different init: everything must come from the checkpoint
    resumed = meta_train(model, learner, train, valid, CFG, seed=7, checkpoint_dir=tmp_path,
                         resume=True)
    assert resumed.steps == full.steps == 8
    assert resumed.history == full.history
    for k, v in full.model_state.items():
        torch.testing.assert_close(resumed.model_state[k], v, rtol=0, atol=0)
    for k, v in full.learner_state.items():
        torch.testing.assert_close(resumed.learner_state[k], v, rtol=0, atol=0)


def test_early_stopping_and_callbacks() -> None:
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)
    model, learner = _fresh()
    seen: list[tuple[int, dict]] = []
    cfg = TrainConfig(lr=0.0, tasks_per_batch=4, max_steps=100, eval_every=2, patience=3,
                      device="cpu", progress=False, checkpoint_every=0)
    result = meta_train(model, learner, train, valid, cfg, seed=0,
                        callbacks=[lambda s, m: seen.append((s, m))])
    # lr 0: the starting point (validated at step 0) is the best, the next 3 validations do
    # not improve -> stop at step 6 keeping the initial weights
    assert result.stopped_early and result.steps == 6 and result.best_step == 0
    evals = [(s, m) for s, m in seen if "valid_mae" in m]
    assert [s for s, _ in evals] == [0, 2, 4, 6]
    assert sum("train_loss" in m for _, m in seen) == 6
    assert result.best_valid_mae == pytest.approx(evals[0][1]["valid_mae"])


def test_training_lowers_validation_error_and_predict_shape() -> None:
    train, valid = tiny_tasks(0, n=40), tiny_tasks(1, n=8)
    model, learner = _fresh()
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=8, max_steps=40, eval_every=10, patience=10,
                      device="cpu", progress=False, checkpoint_every=0)
    result = meta_train(model, learner, train, valid, cfg, seed=0)
    assert result.history[-1]["best_valid_mae"] < result.history[0]["valid_mae"]
    scores = predict(model, learner, valid, cfg)
    assert scores.shape == valid.query_items.shape and np.isfinite(scores).all()


def test_baselines_predict_every_query() -> None:
    train, valid = tiny_tasks(0, n=20), tiny_tasks(1, n=6)
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=8, max_steps=6, eval_every=3, device="cpu",
                      progress=False, checkpoint_every=0)
    baselines, result = train_baselines(tiny_features(), train, valid, TINY,
                                        plain_meta(finetune_steps=2), cfg, seed=0)
    assert set(baselines) == {"user_mean", "item_mean", "global", "finetune", "most_pop",
                              "item_knn"}
    preds = {k: b.predict(valid) for k, b in baselines.items()}
    for p in preds.values():
        assert p.shape == valid.query_items.shape and np.isfinite(p).all()
    assert not np.allclose(preds["global"], preds["finetune"])  # fine-tuning changed something
    assert result.steps == 6


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_on_gpu() -> None:
    train, valid = tiny_tasks(0, n=20), tiny_tasks(1, n=6)
    model, learner = _fresh()
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=8, max_steps=6, eval_every=3, device="cuda",
                      amp=True, progress=False, checkpoint_every=0)
    result = meta_train(model, learner, train, valid, cfg, seed=0)
    assert next(model.parameters()).is_cuda and np.isfinite(result.best_valid_mae)


def test_resume_is_exact_with_resplit_tasks(tmp_path) -> None:
    """Redrawn support/query splits come from the saved sampler generator: exact resume."""
    from dataclasses import replace

    cfg = replace(CFG, resplit=True)
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)
    model, learner = _fresh()
    full = meta_train(model, learner, train, valid, cfg, seed=7)
    plain = meta_train(*_fresh(), train, valid, replace(CFG, resplit=False), seed=7)
    assert any(not torch.equal(full.model_state[k], plain.model_state[k]) for k in full.model_state)
    resumed = _crash_and_resume(cfg, train, valid, tmp_path)
    for k, v in full.model_state.items():
        torch.testing.assert_close(resumed.model_state[k], v, rtol=0, atol=0)


def test_resuming_a_run_that_already_stopped_trains_nothing_more(tmp_path) -> None:
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)
    cfg = TrainConfig(lr=0.0, tasks_per_batch=4, max_steps=100, eval_every=2, patience=3,
                      device="cpu", progress=False, checkpoint_every=6)
    first = meta_train(*_fresh(), train, valid, cfg, seed=0, checkpoint_dir=tmp_path)
    assert first.stopped_early and first.steps == 6  # its last checkpoint is the stopping point
    seen: list[int] = []
    again = meta_train(*_fresh(), train, valid, cfg, seed=0, checkpoint_dir=tmp_path, resume=True,
                       callbacks=[lambda s, m: seen.append(s)])
    assert again.steps == 6 and again.history == first.history and seen == []


def test_validation_averages_the_mae_over_the_configured_support_sizes() -> None:
    from dataclasses import replace

    from metarec.data.arrays import limit_support
    from metarec.training.loop import valid_mae

    valid = tiny_tasks(1, n=8)
    model, learner = _fresh()
    mask = valid.query_mask.astype(bool)

    def mae(tasks) -> float:
        return float(np.abs(predict(model, learner, tasks, CFG) - valid.query_ratings)[mask].mean())

    full, none, two = mae(valid), mae(limit_support(valid, 0, 0)), mae(limit_support(valid, 2, 0))
    assert none != full  # adaptation to the support changes the validation error
    assert valid_mae(model, learner, valid, CFG) == pytest.approx(full)  # default ("all",)
    curve = replace(CFG, valid_shots=(0, 2, "all"))
    assert valid_mae(model, learner, valid, curve) == pytest.approx((none + two + full) / 3)
    for bad in [(), (-1,), ("some",)]:
        with pytest.raises(ValueError, match="valid_shots"):
            valid_mae(model, learner, valid, replace(CFG, valid_shots=bad))


def test_fallback_criterion_keeps_its_best_when_the_first_never_beats_step_0(monkeypatch) -> None:
    """train.fallback_shots: the first criterion is made to worsen at every validation (the
    situation of a split whose full-support error is best untrained); the run then follows
    the fallback's real error, stops when neither improves, and keeps the fallback's best."""
    from dataclasses import replace

    import metarec.training.loop as loop

    real = loop.valid_mae
    calls = {"first": 0}

    def first_worsens(model, learner, tasks, cfg, shots=None):
        if shots is not None:  # the fallback: the real error
            return real(model, learner, tasks, cfg, shots)
        calls["first"] += 1
        return 1.0 + calls["first"]

    monkeypatch.setattr(loop, "valid_mae", first_worsens)
    train, valid = tiny_tasks(0, n=40), tiny_tasks(1, n=8)
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=8, max_steps=40, eval_every=5, patience=2,
                      device="cpu", progress=False, checkpoint_every=0,
                      calibrate_prior=False)  # the weights kept, as validated
    plain = meta_train(*_fresh(), train, valid, replace(cfg, fallback_shots=()), seed=0)
    assert plain.best_step == 0 and plain.criterion == "valid_shots" and plain.steps == 10
    calls["first"] = 0
    model, learner = _fresh()
    result = meta_train(model, learner, train, valid, replace(cfg, fallback_shots=(0, "all")),
                        seed=0)
    errors = {int(h["step"]): h["valid_fallback_mae"] for h in result.history}
    assert len(errors) == len(result.history)  # followed at every validation: first stuck at 0
    best = min(errors, key=errors.get)
    assert best > 0 and result.criterion == "fallback_shots" and result.best_step == best
    assert result.fallback_valid_mae == pytest.approx(errors[best])
    # ... with the first criterion's value at that step, and patience counted on the fallback
    assert result.best_valid_mae == pytest.approx(1.0 + 1 + best // 5)
    assert result.steps > plain.steps or result.steps == cfg.max_steps
    # the weights kept are the fallback's best: validating them again gives its error
    again = real(model, learner, valid, cfg, (0, "all"))
    assert again == pytest.approx(errors[best], abs=1e-6)


def test_fallback_criterion_is_left_once_the_first_beats_step_0() -> None:
    """With a first criterion that improves, the fallback is validated only until it does,
    and the result is the plain run's."""
    from dataclasses import replace

    train, valid = tiny_tasks(0, n=40), tiny_tasks(1, n=8)
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=8, max_steps=40, eval_every=5, patience=10,
                      device="cpu", progress=False, checkpoint_every=0)
    plain = meta_train(*_fresh(), train, valid, replace(cfg, fallback_shots=()), seed=0)
    assert plain.best_step > 0
    result = meta_train(*_fresh(), train, valid, replace(cfg, fallback_shots=(0, 1)), seed=0)
    assert result.criterion == "valid_shots" and result.best_step == plain.best_step
    first_gain = min(int(h["step"]) for h in plain.history if h["step"] > 0 and
                     h["valid_mae"] < plain.history[0]["valid_mae"])
    followed = [int(h["step"]) for h in result.history if "valid_fallback_mae" in h]
    assert followed == [s for s in range(0, first_gain, 5)]
    for k, v in plain.model_state.items():
        torch.testing.assert_close(result.model_state[k], v, rtol=0, atol=0)


def test_resume_is_exact_while_the_fallback_criterion_is_followed(tmp_path, monkeypatch) -> None:
    """The fallback's best (step, error, weights, patience) is in the checkpoint: a resumed
    run ends where an uninterrupted one does."""
    from dataclasses import replace

    import metarec.training.loop as loop

    real = loop.valid_mae
    monkeypatch.setattr(loop, "valid_mae", lambda m, l, t, c, shots=None: (
        1.0 if shots is None else real(m, l, t, c, shots)))  # the first never beats step 0
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)
    cfg = replace(CFG, fallback_shots=(1, "all"))
    full = meta_train(*_fresh(), train, valid, cfg, seed=7)
    assert full.criterion == "fallback_shots"
    resumed = _crash_and_resume(cfg, train, valid, tmp_path)
    assert resumed.history == full.history and resumed.best_step == full.best_step
    assert resumed.criterion == "fallback_shots"
    assert resumed.fallback_valid_mae == full.fallback_valid_mae
    for k, v in full.model_state.items():
        torch.testing.assert_close(resumed.model_state[k], v, rtol=0, atol=0)


def test_ranking_criterion_is_one_minus_the_mean_ndcg_and_checked() -> None:
    """train.valid_metric ndcg_at_<k>: early stopping minimises 1 - the mean over tasks of the
    query sets' nDCG@k (per task in task_errors, which the head selection compares); any other
    name is an error naming the setting, before training starts."""
    from dataclasses import replace

    from metarec.data.arrays import limit_support
    from metarec.evaluation.metrics import ndcg_at_k
    from metarec.training.loop import task_errors, valid_mae

    train, valid = tiny_tasks(0, n=40), tiny_tasks(1, n=8)
    model, learner = _fresh()
    mask = valid.query_mask.astype(bool)
    cfg = replace(CFG, valid_metric="ndcg_at_3", valid_shots=(0, "all"))
    per_shot = [ndcg_at_k(predict(model, learner, t, CFG), valid.query_ratings, mask, 3)
                for t in (limit_support(valid, 0, 0), valid)]
    expected = np.mean([1.0 - np.nanmean(n) for n in per_shot])
    assert valid_mae(model, learner, valid, cfg) == pytest.approx(expected)
    by_task = task_errors(model, learner, valid, cfg)
    np.testing.assert_allclose(by_task, 1.0 - (per_shot[0] + per_shot[1]) / 2, rtol=1e-6)
    assert valid_mae(model, learner, valid, CFG) != pytest.approx(expected)  # mae: another number
    result = meta_train(*_fresh(), train, valid, replace(cfg, max_steps=6), seed=0)
    assert 0 <= result.best_valid_mae <= 1 and result.history[0]["valid_mae"] <= 1
    for bad in ["ndcg", "ndcg_at_0", "precision_at_3", "rmse"]:
        with pytest.raises(ValueError, match="train.valid_metric"):
            meta_train(*_fresh(), train, valid, replace(cfg, valid_metric=bad), seed=0)


def test_rotated_validation_is_the_stopping_set_and_checked() -> None:
    """train.valid_rotations: meta_train stops on the validation tasks with their rotations
    added (metarec.data.tasks.rotate_queries, the training seed's order), which is the same as
    handing it those tasks; a bad value is an error naming the setting."""
    from dataclasses import replace

    from metarec.data.tasks import rotate_queries

    train, valid = tiny_tasks(0, n=40), tiny_tasks(1, n=8, support=12, query=3)
    cfg = replace(CFG, max_steps=4)
    rotated = meta_train(*_fresh(), train, valid, replace(cfg, valid_rotations=3), seed=0)
    given = meta_train(*_fresh(), train, rotate_queries(valid, 3, 0), cfg, seed=0)
    plain = meta_train(*_fresh(), train, valid, cfg, seed=0)
    assert len(rotate_queries(valid, 3, 0)) > len(valid)
    assert [h["valid_mae"] for h in rotated.history] == [h["valid_mae"] for h in given.history]
    assert rotated.history[0]["valid_mae"] != plain.history[0]["valid_mae"]
    with pytest.raises(ValueError, match="train.valid_rotations"):
        meta_train(*_fresh(), train, valid, replace(cfg, valid_rotations=0), seed=0)
