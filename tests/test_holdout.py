"""Training tasks meet their items fitted without their own ratings (``train.hold_out``):
the leave-one-out values against refits by hand, the model's virtual rows, and meta-training
with them (nothing of them saved, the catalog rows unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.config import ModelConfig, TrainConfig
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.models.fitting import _als, item_effects, leave_one_out, pure_svd
from metarec.training.holdout import hold_out_ratings, training_ratings
from metarec.training.loop import fit_item_stats, meta_train, predict
from tests.test_models import plain_meta, tiny_features, tiny_tasks

MODEL = ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4, item_stats=True,
                    item_offset=True, item_norm=True, embedding_std=0.3, item_id=True,
                    item_factors=3, head_factors=True, item_factors_als=2, item_factors_reg=3.0)


def _ratings(seed: int = 0, n: int = 300, items: int = 25, users: int = 30):
    """Distinct (user, item) pairs with ratings 1..5; item 24 rated exactly once."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.unique(torch.randint(0, users, (n,), generator=g) * 1000
                         + torch.randint(0, items - 1, (n,), generator=g))
    users_, items_ = pairs // 1000, pairs % 1000
    users_, items_ = torch.cat([users_, torch.tensor([0])]), torch.cat([items_, torch.tensor([24])])
    return items_, torch.randint(1, 6, (len(items_),), generator=g).double(), users_


@pytest.mark.parametrize("debias", [0, 2])
def test_item_effects_without_the_rating_equal_a_refit(debias) -> None:
    """debias 0: the item's other ratings shrunk toward the full fit's global mean, by hand;
    debias 2: a refit without the rating (whose b_u and global mean move a little too)."""
    items, r, users = _ratings()
    loo = leave_one_out(items, r, users, 25, 4.0, debias)
    for j in (0, 17, 101):
        keep = torch.arange(len(r)) != j
        if debias == 0:
            others = r[keep & (items == items[j])]
            want = float((others.sum() + 4.0 * r.mean()) / (len(others) + 4.0) - r.mean())
            assert abs(float(loo["effect"][j]) - want) < 1e-12
        else:
            refit = item_effects(items[keep], r[keep], users[keep], 25, 4.0, debias)
            assert abs(float(loo["effect"][j]) - float(refit[items[j]])) < 0.02
    last = len(r) - 1  # item 24's only rating: without it the item is unknown
    assert float(loo["effect"][last]) == 0.0 and float(loo["known"][last]) == 0.0
    assert float(loo["log_count"][last]) == 0.0
    count = torch.bincount(items, minlength=25).double()
    torch.testing.assert_close(loo["log_count"], torch.log1p(count[items] - 1)
                               / torch.log1p(count.max()))


def test_item_factors_without_the_rating_solve_the_item_step_without_its_user() -> None:
    items, r, users = _ratings(1)
    loo = leave_one_out(items, r, users, 25, 4.0, 0, n_factors=3, reg=3.0, sweeps=2)
    fac, p, res, scale = _als(items, r, users, pure_svd(items, r, users, 25, 3), 3.0, 2)
    same = torch.zeros_like(r, dtype=torch.bool)
    for j in (0, 40, 99):
        others = (items == items[j]) & (torch.arange(len(r)) != j)
        a = p[others].T @ p[others] + 3.0 * torch.eye(3, dtype=torch.float64)
        direct = torch.linalg.solve(a, p[others].T @ res[others]) * scale
        torch.testing.assert_close(loo["fac"][j], direct)
        same[j] = torch.allclose(loo["fac"][j], fac[items[j]])
    assert not same.any()  # each rating did pull its item
    assert float(loo["fac"][-1].abs().max()) == 0.0  # item 24 without its only rating


def _fitted_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_features(), MODEL).eval()
    fit_item_stats(model, tiny_tasks(seed, n=12))
    return model


def test_virtual_rows_are_their_item_but_for_the_fitted_values_and_are_never_saved() -> None:
    model = _fitted_model()
    user = model.user_table[2]
    catalog = model(user, torch.tensor([3, 5]))
    keys = set(model.state_dict())
    stats, fac, known = model.item_stats[[3, 5]], model.item_fac[[3, 5]], model.item_known[[3, 5]]
    model.set_virtual_rows(torch.tensor([3, 5]), stats=stats.clone(), fac=fac.clone(),
                           known=known.clone())
    rows = torch.tensor([30, 31])  # the catalog has 30 items
    torch.testing.assert_close(model(user, rows), catalog)
    torch.testing.assert_close(model.head_features(rows), fac)
    model.set_virtual_rows(torch.tensor([3, 5]), stats=stats + torch.tensor([0.0, 0.5]),
                           fac=fac, known=known)
    torch.testing.assert_close(model.offset(rows), model.offset(torch.tensor([3, 5])) + 0.5)
    assert not torch.allclose(model(user, rows), catalog)
    torch.testing.assert_close(model(user, torch.tensor([3, 5])), catalog)  # catalog untouched
    assert set(model.state_dict()) == keys
    model.clear_virtual_rows()
    assert model.virtual_base is None
    with pytest.raises(ValueError, match="stats must match"):
        model.set_virtual_rows(torch.tensor([3]), stats=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="rows in 0..29"):
        model.set_virtual_rows(torch.tensor([30]))


def test_hold_out_points_every_rating_at_its_item_fitted_without_it() -> None:
    model = _fitted_model()
    tasks = tiny_tasks(0, n=12)
    held = hold_out_ratings(model, tasks)
    items, ratings, users, sm, qm = training_ratings(tasks)
    got = np.concatenate([held.support_items[sm], held.query_items[qm]])
    np.testing.assert_array_equal(got, 30 + np.arange(len(items)))
    np.testing.assert_array_equal(held.support_items[~sm], tasks.support_items[~sm])
    base = model.base_rows(torch.as_tensor(got)).numpy()
    np.testing.assert_array_equal(base, items)
    loo = leave_one_out(torch.as_tensor(items), torch.as_tensor(ratings, dtype=torch.float64),
                        torch.as_tensor(users), 30, model.item_stats_shrinkage)
    torch.testing.assert_close(model.offset(torch.as_tensor(got)), loo["effect"].float())
    # a rating of a task's query no longer raises its own item's offset
    j = int(np.nonzero(ratings == 5)[0][0])
    assert float(model.offset(torch.tensor(30 + j))) < float(model.offset(torch.tensor(items[j])))


def test_meta_training_with_hold_out_saves_only_catalog_rows_and_predicts_as_usual() -> None:
    cfg = TrainConfig(lr=1e-2, tasks_per_batch=4, max_steps=4, eval_every=2, patience=100,
                      checkpoint_every=0, device="cpu", progress=False, eval_batch=4,
                      hold_out="all")
    train, valid = tiny_tasks(0, n=12), tiny_tasks(1)
    results = {}
    for on in ("none", "all"):
        torch.manual_seed(0)
        model = build_model(tiny_features(), MODEL)
        learner = build_learner(model, plain_meta(learner="ridge"))
        result = meta_train(model, learner, train, valid,
                            TrainConfig(**{**cfg.__dict__, "hold_out": on}), seed=3)
        assert model.virtual_base is None and set(result.model_state) == set(model.state_dict())
        results[on] = (result, predict(model, learner, valid, cfg))
    (off, pred_off), (on, pred_on) = results["none"], results["all"]
    # the same catalog values fitted either way; the training (and so the weights) differs
    for name in ("item_stats", "item_fac", "item_known"):
        torch.testing.assert_close(on.model_state[name], off.model_state[name])
    assert pred_on.shape == valid.query_items.shape and np.isfinite(pred_on).all()
    assert not np.allclose(pred_on, pred_off)


def test_hold_out_refuses_statistics_fitted_on_support_only() -> None:
    model = build_model(tiny_features(), ModelConfig(
        embedding_dim=4, hidden=(8,), text_proj_dim=4, item_stats=True, item_factors=0,
        head_factors=False, item_stats_from="support"))
    fit_item_stats(model, tiny_tasks())
    with pytest.raises(ValueError, match="item_stats_from: all"):
        hold_out_ratings(model, tiny_tasks())


def test_hold_out_of_the_statistics_only_keeps_the_items_factors() -> None:
    model = _fitted_model()
    tasks = tiny_tasks(0, n=12)
    held = hold_out_ratings(model, tasks, factors=False)
    items, _, _, sm, _ = training_ratings(tasks)
    rows = torch.as_tensor(held.support_items[sm])
    assert model.virtual_fac is None and model.virtual_stats is not None
    torch.testing.assert_close(model.head_features(rows), model.item_fac[items[:len(rows)]])
