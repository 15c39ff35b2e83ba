"""Support-size sampling for meta-training (metarec.meta.inner.sample_support): the sizes follow
the configured distribution, the masks keep exactly that many real ratings, padding stays
padding, k = 0 empties the support; every learner trains on it and resumes exactly."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from metarec.meta.inner import (
    make_batch,
    sample_support,
    subsample_support,
    support_sizes,
)
from metarec.meta.learners import META_LEARNERS, build_learner
from metarec.models.estimator import build_model
from metarec.training.loop import meta_train
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks
from tests.test_train import CFG, Interrupt

N = 200_000


def _draws(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dist", ["uniform", "log-uniform"])
def test_sizes_follow_the_configured_distribution(dist: str) -> None:
    k_max = 10
    sizes = support_sizes(torch.full((N,), 50), _draws(N, 2), full_prob=0.25,
                          max_shots=k_max, dist=dist).numpy()
    assert abs(np.mean(sizes == 50) - 0.25) < 0.01  # the full support, with its probability
    few = sizes[sizes != 50]
    freq = np.bincount(few, minlength=k_max + 1) / len(few)
    if dist == "uniform":
        want = np.full(k_max + 1, 1 / (k_max + 1))
    else:
        want = np.array([math.log((k + 2) / (k + 1)) / math.log(k_max + 2)
                         for k in range(k_max + 1)])
    np.testing.assert_allclose(freq, want, atol=0.006)


def test_sizes_are_capped_at_the_available_ratings_and_checked() -> None:
    available = torch.tensor([0, 1, 2, 3] * 1000)
    sizes = support_sizes(available, _draws(4000, 2), full_prob=0.5, max_shots=10,
                          dist="uniform")
    assert bool((sizes <= available).all()) and bool((sizes >= 0).all())
    full = support_sizes(available, _draws(4000, 2), full_prob=1.0, max_shots=10, dist="uniform")
    assert torch.equal(full, available)
    for bad in (dict(full_prob=1.5), dict(max_shots=-1), dict(dist="normal")):
        kwargs = dict(full_prob=0.5, max_shots=3, dist="uniform") | bad
        with pytest.raises(ValueError):
            support_sizes(available, _draws(4000, 2), **kwargs)


def test_subsample_keeps_that_many_real_ratings_and_leaves_the_rest_alone() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    tasks = tiny_tasks(3, n=12, support=6)
    batch = make_batch(model.user_table, tasks)
    sizes = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 6])
    out = subsample_support(batch, sizes, _draws(12, 6))
    real = batch.support_mask.sum(1).long()
    assert torch.equal(out.support_mask.sum(1).long(), torch.minimum(sizes, real))
    assert bool((out.support_mask <= batch.support_mask).all())  # padding stays padding
    assert out.support_mask[sizes == 0].sum() == 0  # k = 0: an all-zero support mask
    for name in ("user_cat", "support_items", "support_ratings", "query_items",
                 "query_ratings", "query_mask"):
        assert torch.equal(getattr(out, name), getattr(batch, name))
    again = sample_support(batch, _draws(12, 8), full_prob=0.0, max_shots=3, dist="uniform")
    assert bool((again.support_mask.sum(1) <= 3).all())
    with pytest.raises(ValueError, match="subsample_support"):
        subsample_support(batch, sizes, _draws(12, 5))


@pytest.mark.parametrize("name", META_LEARNERS)
def test_every_learner_trains_on_sampled_support_sizes(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    learner = build_learner(model, plain_meta(learner=name, inner_steps=1, inner_lr=0.05))
    cfg = replace(CFG, max_steps=4, checkpoint_every=0, support_full_prob=0.2,
                  support_max_shots=3)
    result = meta_train(model, learner, tiny_tasks(0, n=10), tiny_tasks(1, n=4), cfg, seed=0)
    assert np.isfinite(result.best_valid_mae)
    assert all(torch.isfinite(v).all() for v in result.model_state.values())


def test_resume_is_exact_with_sampled_support_sizes(tmp_path) -> None:
    """Support sizes come from the checkpointed sampler generator: exact resume."""
    cfg = replace(CFG, resplit=True, support_full_prob=0.3, support_max_shots=4,
                  support_shots="log-uniform")
    train, valid = tiny_tasks(0, n=10), tiny_tasks(1, n=4)

    def fresh(seed: int = 0):
        torch.manual_seed(seed)
        model = build_model(tiny_features(), TINY)
        return model, build_learner(model, plain_meta(learner="metasgd", inner_steps=1,
                                                      inner_lr=0.05))

    full = meta_train(*fresh(), train, valid, cfg, seed=7)
    plain = meta_train(*fresh(), train, valid, replace(cfg, support_full_prob=1.0), seed=7)
    assert full.history != plain.history  # the sampled sizes change training

    def crash(step: int, metrics: dict) -> None:
        if step == 5 and "train_loss" in metrics:
            raise Interrupt

    with pytest.raises(Interrupt):
        meta_train(*fresh(), train, valid, cfg, seed=7, callbacks=[crash], checkpoint_dir=tmp_path)
    resumed = meta_train(*fresh(123), train, valid, cfg, seed=7, checkpoint_dir=tmp_path,
                         resume=True)
    assert resumed.history == full.history  # every validation after the resume, exactly
    for k, v in full.model_state.items():
        torch.testing.assert_close(resumed.model_state[k], v, rtol=0, atol=0)
