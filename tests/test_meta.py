"""The inner loop and the learners: parity with a plain-autograd per-task reference, padding
invariance, the query scored with adapted parameters, adaptation lowering the support loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from metarec.config import MetaConfig
from metarec.data.arrays import TaskArrays
from metarec.adaptation.gradient import adapt_batch
from metarec.meta.inner import make_batch, masked_mse
from metarec.training.baselines import ItemMeanBaseline, UserMeanBaseline, task_ratings
from metarec.meta.learners import adapted_names, build_learner
from metarec.models.estimator import build_model
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_features(seed), TINY)
    return model, tiny_tasks(seed)


def _reference_meta_grads(model, learner, tasks: TaskArrays, steps: int, lr: float,
                          adapted: frozenset[str], first_order: bool, per_param_lr=None):
    """Per-task Python loop with torch.autograd.grad on the unpadded slots (no vmap, no
    torch.func.grad): mean query loss over tasks and its gradient w.r.t. every meta-parameter."""
    params = dict(model.named_parameters())
    meta = list(params.values()) + list(learner.parameters())
    total = 0.0
    for n in range(len(tasks)):
        sm, qm = tasks.support_mask[n], tasks.query_mask[n]
        user = model.user_table[int(tasks.user_row[n])]
        s_items = torch.as_tensor(tasks.support_items[n][sm])
        s_r = torch.as_tensor(tasks.support_ratings[n][sm])
        q_items = torch.as_tensor(tasks.query_items[n][qm])
        q_r = torch.as_tensor(tasks.query_ratings[n][qm])
        fast = dict(params)
        for _ in range(steps):
            loss = ((functional_call(model, fast, (user, s_items)) - s_r) ** 2).mean()
            names = sorted(adapted)
            grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=not first_order)
            for k, g in zip(names, grads):
                rate = lr if per_param_lr is None else per_param_lr[k]
                fast[k] = fast[k] - rate * g
        total = total + ((functional_call(model, fast, (user, q_items)) - q_r) ** 2).mean()
    total = total / len(tasks)
    return total, torch.autograd.grad(total, meta)


@pytest.mark.parametrize("name,which,first_order", [
    ("maml", "all", False), ("maml", "decision", False), ("fomaml", "all", True),
    ("melu", "decision", False), ("melu", "decision", True), ("metasgd", "all", False),
])
def test_batched_meta_gradient_matches_per_task_reference(name, which, first_order) -> None:
    model, tasks = _setup()
    cfg = plain_meta(learner=name, inner_steps=2, inner_lr=0.05, adapted=which,
                     first_order=first_order)
    learner = build_learner(model, cfg)
    meta = list(model.parameters()) + list(learner.parameters())
    loss = learner.meta_loss(model, make_batch(model.user_table, tasks))
    grads = torch.autograd.grad(loss, meta)
    rates = learner.adaptation().per_param_lr
    ref_loss, ref_grads = _reference_meta_grads(model, learner, tasks, 2, 0.05,
                                                adapted_names(model, which), first_order, rates)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_second_order_differs_from_first_order() -> None:
    """Sanity of the parity test: the two orders really give different meta-gradients."""
    model, tasks = _setup()
    batch = make_batch(model.user_table, tasks)
    out = []
    for fo in (False, True):
        learner = build_learner(model, plain_meta(learner="maml", inner_steps=2, inner_lr=0.05,
                                                  adapted="all", first_order=fo))
        out.append(torch.autograd.grad(learner.meta_loss(model, batch), model.decision[0].weight)[0])
    assert (out[0] - out[1]).abs().max() > 1e-6


def _pad(tasks: TaskArrays, extra_s: int, extra_q: int, seed: int) -> TaskArrays:
    """Append padded slots holding random items and ratings (masked out)."""
    r = np.random.default_rng(seed)
    n = len(tasks)

    def grow(items, ratings, mask, extra):
        return (np.concatenate([items, r.integers(0, 30, (n, extra))], 1),
                np.concatenate([ratings, r.integers(1, 6, (n, extra)).astype(np.float32)], 1),
                np.concatenate([mask, np.zeros((n, extra), bool)], 1))

    si, sr, sm = grow(tasks.support_items, tasks.support_ratings, tasks.support_mask, extra_s)
    qi, qr, qm = grow(tasks.query_items, tasks.query_ratings, tasks.query_mask, extra_q)
    return TaskArrays(tasks.user_ids, tasks.user_row, si, sr, sm, qi, qr, qm)


@settings(max_examples=5, deadline=None)
@given(name=st.sampled_from(["maml", "melu", "metasgd", "reptile"]),
       extra_s=st.integers(0, 4), extra_q=st.integers(0, 3), seed=st.integers(0, 100))
def test_padded_batch_loss_equals_unpadded_tasks_one_by_one(name, extra_s, extra_q, seed) -> None:
    model, tasks = _setup()
    learner = build_learner(model, plain_meta(learner=name, inner_steps=2, inner_lr=0.05,
                                              adapted="all" if name == "reptile" else "decision"))
    padded = _pad(tasks, extra_s, extra_q, seed)
    batch_loss = learner.meta_loss(model, make_batch(model.user_table, padded))
    single = []
    for n in range(len(tasks)):
        one = tasks.subset(np.array([n]))
        s, q = int(one.support_mask.sum()), int(one.query_mask.sum())
        one = TaskArrays(one.user_ids, one.user_row, one.support_items[:, :s],
                         one.support_ratings[:, :s], one.support_mask[:, :s],
                         one.query_items[:, :q], one.query_ratings[:, :q], one.query_mask[:, :q])
        single.append(learner.meta_loss(model, make_batch(model.user_table, one)))
    if name == "reptile":  # the pull term is not a mean over tasks; compare the fast weights
        return _reptile_padding(model, learner, tasks, padded)
    torch.testing.assert_close(batch_loss, torch.stack(single).mean(), atol=1e-5, rtol=1e-5)


def _reptile_padding(model, learner, tasks, padded) -> None:
    a, _ = learner.adapt(model, make_batch(model.user_table, tasks))
    b, _ = learner.adapt(model, make_batch(model.user_table, padded))
    for k in learner.adapted_set:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_query_loss_is_computed_with_adapted_parameters() -> None:
    """learn2learn issue #420: the query must be scored by the adapted model, not the initial one."""
    model, tasks = _setup()
    batch = make_batch(model.user_table, tasks)
    learner = build_learner(model, plain_meta(learner="melu", inner_steps=1, inner_lr=0.1))
    meta_loss = learner.meta_loss(model, batch)
    unadapted = masked_mse(model(batch.user_cat, batch.query_items), batch.query_ratings,
                           batch.query_mask).mean()
    # by hand: one SGD step of the decision layers per task, then the query loss
    dec = model.decision_params()
    by_hand = []
    for n in range(len(tasks)):
        s = masked_mse(model(batch.user_cat[n], batch.support_items[n]),
                       batch.support_ratings[n], batch.support_mask[n])
        grads = torch.autograd.grad(s, list(dec.values()), create_graph=True)
        fast = {k: p - 0.1 * g for (k, p), g in zip(dec.items(), grads)}
        x = model.embed(batch.user_cat[n], batch.query_items[n])
        by_hand.append(masked_mse(model.decide(fast, x), batch.query_ratings[n], batch.query_mask[n]))
    torch.testing.assert_close(meta_loss, torch.stack(by_hand).mean(), atol=1e-5, rtol=1e-5)
    assert abs(float(meta_loss.detach()) - float(unadapted.detach())) > 1e-3
    # predictions too: predict() scores with the adapted weights
    zero = build_learner(model, plain_meta(learner="melu", inner_steps=0))
    with torch.no_grad():
        assert not torch.allclose(learner.predict(model, batch), zero.predict(model, batch))


@pytest.mark.parametrize("which", ["decision", "all"])
def test_adaptation_lowers_the_support_loss(which) -> None:
    model, tasks = _setup(1)
    batch = make_batch(model.user_table, tasks)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    adapted = adapted_names(model, which)
    before = masked_mse(model(batch.user_cat, batch.support_items), batch.support_ratings,
                        batch.support_mask)
    fast = adapt_batch(model, params, buffers, batch, steps=3, lr=0.01, adapted=adapted,
                       first_order=True)
    after = torch.stack([
        masked_mse(functional_call(model, {k: (v[n] if k in adapted else v) for k, v in fast.items()},
                                   (batch.user_cat[n], batch.support_items[n])),
                   batch.support_ratings[n], batch.support_mask[n]) for n in range(len(tasks))])
    assert bool((after < before).all()), (before, after)


def test_reptile_gradient_is_theta_minus_mean_fast_weights() -> None:
    model, tasks = _setup()
    learner = build_learner(model, plain_meta(learner="reptile", inner_steps=2, inner_lr=0.05,
                                              adapted="all"))
    batch = make_batch(model.user_table, tasks)
    loss = learner.meta_loss(model, batch)
    # Reptile adapts on support and query together: the reference adapts on their union
    batch.support_items = torch.cat([batch.support_items, batch.query_items], 1)
    batch.support_ratings = torch.cat([batch.support_ratings, batch.query_ratings], 1)
    batch.support_mask = torch.cat([batch.support_mask, batch.query_mask], 1)
    w = model.decision[0].weight
    (g,) = torch.autograd.grad(loss, [w])
    fast, _ = learner.adapt(model, batch)
    torch.testing.assert_close(g, w.detach() - fast["decision.0.weight"].detach().mean(0))
    assert g.abs().max() > 0


def test_unknown_learner_and_adapted_set_are_errors() -> None:
    model, _ = _setup()
    with pytest.raises(ValueError, match="unknown learner 'protonet'"):
        build_learner(model, plain_meta(), "protonet")
    with pytest.raises(ValueError, match="adapted must be"):
        adapted_names(model, "towers")


def test_user_and_item_mean_baselines_by_hand() -> None:
    tasks = TaskArrays(
        user_ids=np.array([1, 2]), user_row=np.array([0, 1]),
        support_items=np.array([[0, 1, 0], [2, 0, 0]]),
        support_ratings=np.array([[4, 2, 0], [5, 0, 0]], np.float32),
        support_mask=np.array([[1, 1, 0], [1, 0, 0]], bool),
        query_items=np.array([[2, 3], [0, 0]]), query_ratings=np.array([[3, 1], [1, 0]], np.float32),
        query_mask=np.array([[1, 1], [1, 0]], bool))
    np.testing.assert_allclose(UserMeanBaseline(3.0).predict(tasks), [[3, 3], [5, 5]])
    items, ratings = task_ratings(tasks)  # item 0: 4, 1 ; item 1: 2 ; item 2: 5, 3 ; item 3: 1
    base = ItemMeanBaseline.fit(items, ratings, n_items=5, shrinkage=1.0)
    mu = 16 / 6
    np.testing.assert_allclose(base.item_means, [(5 + mu) / 3, (2 + mu) / 2, (8 + mu) / 3,
                                                 (1 + mu) / 2, mu])
    np.testing.assert_allclose(base.predict(tasks), base.item_means[tasks.query_items], rtol=1e-6)


@pytest.mark.parametrize("name", ["melu", "metasgd"])
def test_output_bias_rate_moves_the_offset_to_the_mean_residual(name) -> None:
    model, tasks = _setup(2)
    cfg = plain_meta(learner=name, inner_steps=1, inner_lr=0.0, output_bias_lr=0.5)
    learner = build_learner(model, cfg)
    rates = learner.adaptation().per_param_lr
    last = f"decision.{len(model.decision) - 1}.bias"
    assert float(rates[last]) == 0.5 and all(float(r.abs().max()) == 0.0
                                             for n, r in rates.items() if n != last)
    assert (len(list(learner.parameters())) > 0) == (name == "metasgd")
    batch = make_batch(model.user_table, tasks)
    with torch.no_grad():
        base_s = model(batch.user_cat, batch.support_items)
        base_q = model(batch.user_cat, batch.query_items)
        got = learner.predict(model, batch)
    # one step of rate 0.5 on the MSE's bias gradient 2 * mean(y - r) adds mean(r - y)
    m = batch.support_mask
    shift = ((batch.support_ratings - base_s) * m).sum(1) / m.sum(1)
    torch.testing.assert_close(got, base_q + shift[:, None], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="output_bias_lr"):
        build_learner(model, plain_meta(learner=name, output_bias_lr=-1.0))
    # the output layer's weights may have their own rate too (a per-user linear head)
    rates = build_learner(model, plain_meta(learner=name, inner_lr=0.01, output_bias_lr=0.5,
                                            output_weight_lr=0.2)).adaptation().per_param_lr
    assert float(rates[f"decision.{len(model.decision) - 1}.weight"].max()) == pytest.approx(0.2)
    assert float(rates["decision.0.weight"].max()) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="output_weight_lr"):
        build_learner(model, plain_meta(learner=name, output_weight_lr=-1.0))


def test_support_loss_weight_adds_the_unadapted_support_mse() -> None:
    model, tasks = _setup(4)
    batch = make_batch(model.user_table, tasks)
    plain = build_learner(model, plain_meta(learner="melu", inner_lr=0.05))
    aux = build_learner(model, plain_meta(learner="melu", inner_lr=0.05, support_loss_weight=0.5))
    with torch.no_grad():
        support = masked_mse(model(batch.user_cat, batch.support_items), batch.support_ratings,
                             batch.support_mask).mean()
        torch.testing.assert_close(aux.meta_loss(model, batch),
                                   plain.meta_loss(model, batch) + 0.5 * support)
    with pytest.raises(ValueError, match="support_loss_weight"):
        build_learner(model, plain_meta(learner="melu", support_loss_weight=-1.0))


@pytest.mark.parametrize("name", ["melu", "ridge"])
def test_prior_loss_weight_adds_the_unadapted_query_mse(name) -> None:
    model, tasks = _setup(6)
    batch = make_batch(model.user_table, tasks)
    plain = build_learner(model, plain_meta(learner=name, inner_lr=0.05))
    aux = build_learner(model, plain_meta(learner=name, inner_lr=0.05, prior_loss_weight=0.7))
    with torch.no_grad():
        prior = masked_mse(model(batch.user_cat, batch.query_items), batch.query_ratings,
                           batch.query_mask).mean()
        torch.testing.assert_close(aux.meta_loss(model, batch),
                                   plain.meta_loss(model, batch) + 0.7 * prior)
    with pytest.raises(ValueError, match="prior_loss_weight"):
        build_learner(model, plain_meta(learner=name, prior_loss_weight=-1.0))


def test_listnet_loss_by_hand_and_padding_ignored() -> None:
    from metarec.meta.inner import listnet_loss

    scores = torch.tensor([[1.0, 0.0, 0.0]])
    ratings = torch.tensor([[5.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    p = torch.softmax(torch.tensor([5.0, 3.0]), 0)
    logq = torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    torch.testing.assert_close(listnet_loss(scores, ratings, mask), -(p * logq).sum().reshape(1))
    # the padded slot's score never matters; the right order costs less than the reverse
    other = scores.clone()
    other[0, 2] = 100.0
    torch.testing.assert_close(listnet_loss(other, ratings, mask), listnet_loss(scores, ratings, mask))
    assert listnet_loss(-scores, ratings, mask) > listnet_loss(scores, ratings, mask)
    # a task with one real rating has nothing to rank
    assert float(listnet_loss(scores, ratings, torch.tensor([[1.0, 0.0, 0.0]]))) == 0.0


def test_rank_loss_weight_adds_listnet_on_the_adapted_query_scores() -> None:
    from metarec.adaptation.gradient import query_scores
    from metarec.meta.inner import listnet_loss

    model, tasks = _setup(5)
    batch = make_batch(model.user_table, tasks)
    plain = build_learner(model, plain_meta(learner="melu", inner_lr=0.05))
    ranked = build_learner(model, plain_meta(learner="melu", inner_lr=0.05, rank_loss_weight=0.3))
    fast, q_feats = plain.adapt(model, batch)
    scores = query_scores(model, fast, dict(model.named_buffers()), plain.adapted_set,
                          batch.user_cat, batch.query_items, q_feats)
    want = (plain.meta_loss(model, batch)
            + 0.3 * listnet_loss(scores, batch.query_ratings, batch.query_mask).mean())
    torch.testing.assert_close(ranked.meta_loss(model, batch), want)
    with pytest.raises(ValueError, match="rank_loss_weight"):
        build_learner(model, plain_meta(learner="melu", rank_loss_weight=-1.0))


def test_resplit_redraws_support_and_query_keeping_each_tasks_ratings() -> None:
    from metarec.meta.inner import resplit

    model, tasks = _setup(6)
    batch = make_batch(model.user_table, tasks)
    keys = torch.rand(len(batch), tasks.support_items.shape[1] + tasks.query_items.shape[1],
                      generator=torch.Generator().manual_seed(0))
    new = resplit(batch, keys)
    assert new.support_items.shape == batch.support_items.shape
    assert new.query_items.shape == batch.query_items.shape
    q = batch.query_items.shape[1]
    for n in range(len(batch)):
        def pairs(b):
            out = []
            for items, ratings, mask in ((b.support_items, b.support_ratings, b.support_mask),
                                         (b.query_items, b.query_ratings, b.query_mask)):
                out += [(int(i), float(r)) for i, r, m in zip(items[n], ratings[n], mask[n]) if m]
            return sorted(out)
        assert pairs(new) == pairs(batch)  # the same ratings, redistributed
        real = int(batch.support_mask[n].sum() + batch.query_mask[n].sum())
        assert int(new.query_mask[n].sum()) == min(q, real)  # the query is filled first
    assert torch.equal(resplit(batch, keys).query_items, new.query_items)  # keys decide
    other = resplit(batch, torch.rand(keys.shape, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(other.query_items, new.query_items)
    with pytest.raises(ValueError, match="keys"):
        resplit(batch, keys[:, 1:])


def _ridge_reference(model, learner, tasks: TaskArrays) -> torch.Tensor:
    """Per task, unpadded, written from the formula with an explicit inverse: the mean query
    MSE of the ridge learner (its rank loss is off)."""
    lam = learner.ridge_lambda()
    last = model.decision[-1]
    w0 = torch.cat([last.weight[0], last.bias])
    total = 0.0
    for n in range(len(tasks)):
        sm, qm = tasks.support_mask[n], tasks.query_mask[n]
        user = model.user_table[int(tasks.user_row[n])]

        def hidden(items):
            h = model.embed(user, items)
            for layer in model.decision[:-1]:
                h = torch.relu(layer(h))
            return torch.cat([h, torch.ones(len(items), 1)], 1)

        s_items = torch.as_tensor(tasks.support_items[n][sm])
        q_items = torch.as_tensor(tasks.query_items[n][qm])
        hs, hq = hidden(s_items), hidden(q_items)
        r = torch.as_tensor(tasks.support_ratings[n][sm]) - model.offset(s_items) - hs @ w0
        dw = torch.linalg.inv(hs.T @ hs + torch.diag(lam)) @ (hs.T @ r)
        pred = model.offset(q_items) + hq @ (w0 + dw)
        total = total + ((pred - torch.as_tensor(tasks.query_ratings[n][qm])) ** 2).mean()
    return total / len(tasks)


@pytest.mark.parametrize("extra_s,extra_q", [(0, 0), (4, 3)])
def test_ridge_learner_matches_the_formula_task_by_task_and_its_meta_gradient(extra_s, extra_q) -> None:
    model, tasks = _setup(7)
    learner = build_learner(model, plain_meta(learner="ridge", ridge_lambda=0.7,
                                              ridge_bias_lambda=0.2))
    with torch.no_grad():
        learner.log_lam.add_(torch.linspace(-0.5, 0.5, learner.log_lam.numel()) / learner.lam_rate)
    padded = _pad(tasks, extra_s, extra_q, seed=3) if (extra_s or extra_q) else tasks
    meta = list(model.parameters()) + list(learner.parameters())
    loss = learner.meta_loss(model, make_batch(model.user_table, padded))
    want = _ridge_reference(model, learner, tasks)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    got_g = torch.autograd.grad(loss, meta, allow_unused=True)
    want_g = torch.autograd.grad(want, meta, allow_unused=True)
    for g, w in zip(got_g, want_g):
        if w is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert float(got_g[-1].abs().max()) > 0  # the penalties are meta-learned


def test_ridge_learner_without_support_scores_like_the_model_and_rejects_bad_penalties() -> None:
    model, tasks = _setup(8)
    learner = build_learner(model, plain_meta(learner="ridge"))
    batch = make_batch(model.user_table, tasks)
    batch.support_mask = torch.zeros_like(batch.support_mask)
    with torch.no_grad():
        torch.testing.assert_close(learner.predict(model, batch),
                                   model(batch.user_cat, batch.query_items), rtol=1e-5, atol=1e-5)
    for bad in (dict(ridge_lambda=0.0), dict(ridge_bias_lambda=-1.0)):
        with pytest.raises(ValueError, match="ridge"):
            build_learner(model, plain_meta(learner="ridge", **bad))


def test_the_registry_names_the_configurable_learners_and_builds_by_name() -> None:
    """``meta.learner``'s Literal (config.py) and the registry must not drift apart; a new
    learner is one registration away from ``build_learner``."""
    import json
    import typing

    from metarec.adaptation.spec import Adaptation
    from metarec.meta import learners

    literal = typing.get_args(typing.get_type_hints(MetaConfig)["learner"])
    assert set(literal) == set(learners.META_LEARNERS)
    assert set(learners.LEARNERS) == set(learners.REGISTRY) == {*literal, "global"}
    model, _ = _setup()
    for name in learners.REGISTRY:  # every learner describes its adaptation, JSON-able
        adaptation = build_learner(model, plain_meta(), name).adaptation()
        assert isinstance(adaptation, Adaptation) and adaptation.learner == name
        json.dumps(adaptation.to_dict())
    assert build_learner(model, plain_meta(), "global").adaptation().kind == "none"

    @learners.register_learner("twice_melu")
    def _twice(model, cfg):
        return learners.REGISTRY["melu"].build(model, cfg)

    try:
        assert build_learner(model, plain_meta(), "twice_melu").adaptation().kind == "gradient"
        with pytest.raises(ValueError, match="registered twice"):
            learners.register_learner("twice_melu")(_twice)
    finally:
        del learners.REGISTRY["twice_melu"]
