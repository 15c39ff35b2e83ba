"""Implicit-feedback losses (bce, bpr): values by hand, written-out derivatives against
autograd, the inner loop and the learners on them, the ridge Newton step against iterative
solves, and ONNX parity of implicit exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metarec.adaptation.gradient import adapt_batch
from metarec.adaptation.losses import (derivatives, loss_scale, masked_bce, masked_bpr,
                                       masked_loss, summed_derivatives, summed_loss)
from metarec.adaptation.ridge import newton_step
from metarec.adaptation.spec import Adaptation
from metarec.data.arrays import TaskArrays
from metarec.adaptation.kinds import adapted_scores
from metarec.export import METADATA_FILE, export_onnx, parity_check
from metarec.export.runtime import session
from metarec.meta.inner import TaskBatch, make_batch, masked_mse
from metarec.meta.learners import LEARNERS, build_learner
from metarec.models.estimator import build_model
from tests.test_models import TINY, plain_meta, tiny_features

LOSSES = ("mse", "bce", "bpr")


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------- values


def test_bce_by_hand() -> None:
    s = torch.tensor([0.0, 2.0, -1.0, 5.0])
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    m = torch.tensor([1.0, 2.0, 1.0, 0.0])  # a weight 2 and a padded slot
    want = (math.log(2) + 2 * sp(2.0) + sp(-1.0)) / 4
    assert float(masked_bce(s, r, m)) == pytest.approx(want, rel=1e-6)
    assert float(masked_bce(s, r, torch.zeros(4))) == 0.0  # empty support


def test_bpr_by_hand_and_tasks_without_a_pair() -> None:
    s = torch.tensor([[2.0, 0.0, 1.0, 3.0], [1.0, 2.0, 0.0, 0.0]])
    r = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # task 2: positives only
    # task 1: pairs (0, 1) weight 1 and (2, 1) weight 2; slot 3 is padding
    want = (sp(-2.0) + 2 * sp(-1.0)) / 3
    got = masked_bpr(s, r, m)
    assert got.shape == (2,)
    assert float(got[0]) == pytest.approx(want, rel=1e-6) and float(got[1]) == 0.0
    assert float(masked_bpr(s[0], torch.zeros(4), m[0])) == 0.0  # negatives only
    assert float(masked_bpr(s[0], r[0], torch.zeros(4))) == 0.0  # empty support


def test_dispatcher() -> None:
    s, r, m = torch.randn(3, 5), torch.randint(0, 2, (3, 5)).float(), torch.rand(3, 5)
    assert torch.equal(masked_loss("auto", s, r, m), masked_mse(s, r, m))
    assert torch.equal(masked_loss("bce", s, r, m), masked_bce(s, r, m))
    assert torch.equal(masked_loss("bpr", s, r, m), masked_bpr(s, r, m))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        masked_loss("hinge", s, r, m)


# --------------------------------------------------------------------------- derivatives


def _case(kind: str, k: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores, labels, weights (float64) of one task: mixed labels with zero-weight slots, no
    positives, no negatives, or an empty support."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(k, generator=gen, dtype=torch.float64) * 2
    r = (torch.rand(k, generator=gen) < 0.5).double()
    r[:2] = torch.tensor([1.0, 0.0])
    m = (0.5 + 2 * torch.rand(k, generator=gen)).double()
    m[k - 2:] = 0.0  # padding
    if kind == "no_positives":
        r = torch.zeros(k, dtype=torch.float64)
    elif kind == "no_negatives":
        r = torch.ones(k, dtype=torch.float64)
    elif kind == "empty":
        m = torch.zeros(k, dtype=torch.float64)
    return s, r, m


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["mixed", "no_positives", "no_negatives", "empty"])
def test_written_out_derivatives_match_autograd(loss: str, kind: str) -> None:
    for seed in range(3):
        s, r, m = _case(kind, seed=seed)
        for fn, got in ((lambda y: masked_loss(loss, y, r, m), derivatives(loss, s, r, m)),
                        (lambda y: summed_loss(loss, y, r, m),
                         summed_derivatives(loss, s, r, m))):
            want_g = torch.autograd.functional.jacobian(fn, s)
            want_h = torch.autograd.functional.hessian(fn, s)
            torch.testing.assert_close(got.grad, want_g, atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(got.matrix(), want_h, atol=1e-12, rtol=1e-9)
            assert got.diagonal == (loss != "bpr")
        torch.testing.assert_close(loss_scale(loss, r, m) * summed_loss(loss, s, r, m),
                                   masked_loss(loss, s, r, m), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_batched_derivatives_are_per_task(loss: str) -> None:
    cases = [_case(k, seed=i) for i, k in enumerate(["mixed", "no_positives", "empty"])]
    s, r, m = (torch.stack(t) for t in zip(*cases))
    got = derivatives(loss, s, r, m)
    for n, (sn, rn, mn) in enumerate(cases):
        one = derivatives(loss, sn, rn, mn)
        torch.testing.assert_close(got.grad[n], one.grad)
        torch.testing.assert_close(got.curv[n], one.curv)


# --------------------------------------------------------------------------- inner loop


def implicit_tasks(seed: int = 0, n: int = 6, support: int = 6, query: int = 5,
                   users: int = 12, items: int = 30) -> TaskArrays:
    """Implicit-looking padded tasks: 0/1 labels in the ratings, confidence weights 1..3 on the
    positives folded into the masks (the contract's TaskBatch), one task with no support."""
    r = np.random.default_rng(seed)

    def side(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        real = np.arange(width)[None] < r.integers(2, width + 1, n)[:, None]
        labels = (r.random((n, width)) < 0.4).astype(np.float32)
        labels[:, 0], labels[:, 1] = 1.0, 0.0
        weights = np.where(labels > 0, 1 + 2 * r.random((n, width)), 1.0)
        return (np.where(real, r.integers(0, items, (n, width)), 0),
                np.where(real, labels, 0).astype(np.float32),
                np.where(real, weights, 0).astype(np.float32))

    s_items, s_labels, s_mask = side(support)
    s_mask[-1] = 0.0  # a user with no support
    q_items, q_labels, q_mask = side(query)
    return TaskArrays(user_ids=np.arange(n), user_row=r.integers(0, users, n),
                      support_items=s_items, support_ratings=s_labels, support_mask=s_mask,
                      query_items=q_items, query_ratings=q_labels, query_mask=q_mask)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_features(seed), TINY)
    batch = make_batch(model.user_table, implicit_tasks(seed))
    return model, batch


@pytest.mark.parametrize("loss", ["bce", "bpr"])
@pytest.mark.parametrize("which", ["all", "decision"])
def test_inner_loop_matches_a_manual_autograd_step(loss: str, which: str) -> None:
    model, batch = _setup(1)
    params = dict(model.named_parameters())
    adapted = frozenset(n for n in params if which == "all" or n.startswith("decision."))
    lr = 0.3
    fast = adapt_batch(model, params, dict(model.named_buffers()), batch, steps=2, lr=lr,
                       adapted=adapted, first_order=True, loss=loss)
    fn = masked_bce if loss == "bce" else masked_bpr
    moved = 0.0
    for n in range(len(batch)):
        want = dict(params)
        for _ in range(2):
            scores = functional_call(model, want, (batch.user_cat[n], batch.support_items[n]))
            value = fn(scores, batch.support_ratings[n], batch.support_mask[n])
            names = sorted(adapted)
            grads = torch.autograd.grad(value, [want[k] for k in names], allow_unused=True)
            for k, g in zip(names, grads):
                want[k] = want[k] - lr * (torch.zeros_like(want[k]) if g is None else g)
        for k in adapted:
            torch.testing.assert_close(fast[k][n], want[k], atol=1e-6, rtol=1e-5)
            moved = max(moved, float((fast[k][n] - params[k]).detach().abs().max()))
        if n == len(batch) - 1:  # no support: the fast weights are the meta-weights
            assert all(torch.equal(fast[k][n], params[k]) for k in adapted)
    assert moved > 1e-3


@pytest.mark.parametrize("name", [n for n in LEARNERS])
@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_learners_take_the_loss_and_use_it_outside_too(name: str, loss: str) -> None:
    model, batch = _setup(2)
    learner = build_learner(model, plain_meta(learner=name if name != "global" else "melu",
                                              loss=loss), name)
    assert learner.adaptation().loss == loss
    value = learner.meta_loss(model, batch)
    assert torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    if name in ("melu", "ridge"):  # plain query loss: the configured one, adapted
        want = masked_loss(loss, learner.predict(model, batch), batch.query_ratings,
                           batch.query_mask).mean()
        torch.testing.assert_close(value.detach(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_second_order_meta_gradient_matches_a_per_task_autograd_loop(loss: str) -> None:
    """MAML's meta-gradient through two inner steps on the implicit support loss against a
    plain Python loop of torch.autograd.grad(create_graph=True) per task."""
    model, batch = _setup(4)
    learner = build_learner(model, plain_meta(learner="maml", adapted="all", loss=loss,
                                              inner_steps=2, inner_lr=0.3))
    params = dict(model.named_parameters())
    got = torch.autograd.grad(learner.meta_loss(model, batch), list(params.values()))
    fn = masked_bce if loss == "bce" else masked_bpr
    total = 0.0
    for n in range(len(batch)):
        fast = dict(params)
        for _ in range(2):
            value = fn(functional_call(model, fast, (batch.user_cat[n], batch.support_items[n])),
                       batch.support_ratings[n], batch.support_mask[n])
            grads = torch.autograd.grad(value, list(fast.values()), create_graph=True,
                                        allow_unused=True)
            fast = {k: p if g is None else p - 0.3 * g for (k, p), g in zip(fast.items(), grads)}
        total = total + fn(functional_call(model, fast, (batch.user_cat[n], batch.query_items[n])),
                           batch.query_ratings[n], batch.query_mask[n])
    want = torch.autograd.grad(total / len(batch), list(params.values()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_auto_is_mse_and_the_default() -> None:
    model, _ = _setup(0)
    for name in LEARNERS:
        assert build_learner(model, plain_meta(), name).adaptation().loss == "mse"
        assert build_learner(model, plain_meta(loss="auto"), name).adaptation().loss == "mse"
    with pytest.raises(ValueError, match="adaptation loss must be one of"):
        Adaptation(kind="none", learner="x", loss="hinge")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ridge step


def _ridge_problem(seed: int, loss: str, n: int = 3, s: int = 9, h: int = 4):
    """Random float64 head features (N, S, H+1), w0, offsets, labels/ratings and weights (the
    last task's support empty), penalties."""
    gen = torch.Generator().manual_seed(seed)
    hs = torch.cat([torch.randn(n, s, h, generator=gen, dtype=torch.float64),
                    torch.ones(n, s, 1, dtype=torch.float64)], -1)
    w0 = 0.5 * torch.randn(h + 1, generator=gen, dtype=torch.float64)
    offset = 0.3 * torch.randn(n, s, generator=gen, dtype=torch.float64)
    if loss == "mse":
        r = torch.randint(1, 6, (n, s), generator=gen).double()
    else:
        r = (torch.rand(n, s, generator=gen) < 0.4).double()
        r[:, :2] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    m = (0.5 + 2 * torch.rand(n, s, generator=gen)).double()
    m[:, -2:] = 0.0
    m[-1] = 0.0
    lam = 0.2 + torch.rand(h + 1, generator=gen, dtype=torch.float64)
    return hs, w0, offset, r, m, lam


def _lbfgs(objective, dim: int) -> torch.Tensor:
    x = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=500, tolerance_grad=1e-13,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective(x)
        value.backward()
        return value

    opt.step(closure)
    return x.detach()


def test_ridge_step_of_mse_is_the_exact_minimiser() -> None:
    hs, w0, offset, r, m, lam = _ridge_problem(0, "mse")
    dw = newton_step(hs, w0, offset, r, m, lam, "mse")
    for n in range(hs.shape[0]):
        def penalised(x, n=n):
            return summed_loss("mse", offset[n] + hs[n] @ (w0 + x), r[n], m[n]) \
                + 0.5 * (lam * x * x).sum()
        torch.testing.assert_close(dw[n], _lbfgs(penalised, hs.shape[-1]), atol=1e-7, rtol=1e-6)
    assert torch.equal(dw[-1], torch.zeros_like(dw[-1]))  # no support: no change


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_ridge_step_minimises_the_second_order_model_and_lowers_the_loss(loss: str) -> None:
    for seed in range(3):
        hs, w0, offset, r, m, lam = _ridge_problem(seed, loss)
        dw = newton_step(hs, w0, offset, r, m, lam, loss)
        for n in range(hs.shape[0]):
            y0 = offset[n] + hs[n] @ w0

            def data(y, n=n):
                return summed_loss(loss, y, r[n], m[n])

            def penalised(x, n=n):
                return data(offset[n] + hs[n] @ (w0 + x)) + 0.5 * (lam * x * x).sum()

            # the quadratic model at w0 from autograd (not the written-out derivatives)
            g = hs[n].T @ torch.autograd.functional.jacobian(data, y0)
            big_h = hs[n].T @ torch.autograd.functional.hessian(data, y0) @ hs[n]

            def model(x):
                return g @ x + 0.5 * x @ big_h @ x + 0.5 * (lam * x * x).sum()

            torch.testing.assert_close(dw[n], _lbfgs(model, hs.shape[-1]), atol=1e-7, rtol=1e-6)
            zero = torch.zeros_like(dw[n])
            if float(m[n].sum()) == 0.0:
                assert torch.equal(dw[n], zero)
            else:
                assert float(penalised(dw[n])) < float(penalised(zero)) - 1e-6


def test_ridge_head_without_support_keeps_the_prior() -> None:
    model, batch = _setup(3)
    for loss in ("bce", "bpr"):
        learner = build_learner(model, plain_meta(learner="ridge", loss=loss))
        empty = TaskBatch(**{**batch.__dict__, "support_mask": torch.zeros_like(batch.support_mask)})
        with torch.no_grad():
            want = model(batch.user_cat, batch.query_items)
        torch.testing.assert_close(learner.predict(model, empty), want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- ONNX


def _adaptation(model, name: str, loss: str) -> Adaptation:
    cfg = plain_meta(learner=name, loss=loss, inner_steps=2, inner_lr=0.3)
    learner = build_learner(model, cfg)
    if name == "ridge":
        with torch.no_grad():
            learner.log_lam.add_(torch.linspace(-1.0, 1.0, learner.log_lam.numel()) / learner.lam_rate)
    return learner.adaptation()


@pytest.mark.parametrize("name", ["melu", "ridge"])
@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_parity_of_an_implicit_export(tmp_path: Path, name: str, loss: str) -> None:
    torch.manual_seed(5)
    features = tiny_features()
    model = build_model(features, TINY).eval()
    adaptation = _adaptation(model, name, loss)
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    meta = json.loads((res.out_dir / METADATA_FILE).read_text())
    assert meta["adaptation"]["loss"] == loss
    report = parity_check(model, res, adaptation, n_tasks=12, seed=1)
    assert report.passed, report
    assert 0 in report.support_sizes and max(report.support_sizes) >= 10
    # the graph runs the loss it was exported with: against another loss parity fails
    other = Adaptation(**{**adaptation.__dict__, "loss": "bpr" if loss == "bce" else "bce"})
    assert not parity_check(model, res, other, n_tasks=12, seed=1).passed


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_parity_of_an_implicit_ridge_with_offsets_and_head_factors(tmp_path: Path,
                                                                  loss: str) -> None:
    from tests.test_ridge_factors import _model

    model, features, learner = _model(2)
    learner.loss = loss
    adaptation = learner.adaptation()
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    report = parity_check(model, res, adaptation, n_tasks=12, seed=2)
    assert report.passed, report


@pytest.mark.parametrize("name", ["melu", "ridge"])
def test_weighted_support_masks_reach_the_graph_for_mse_too(tmp_path: Path, name: str) -> None:
    """A mask weight m counts m times in both the graph and PyTorch (ridge: once in b, not m^2):
    weight 2 on a rating equals that rating given twice."""
    torch.manual_seed(6)
    features = tiny_features()
    model = build_model(features, TINY).eval()
    adaptation = _adaptation(model, name, "mse")
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    sess = session(res.model_path)
    user, cands = model.user_table[2], torch.arange(20)

    def run(items, ratings, mask):
        feed = {"user_cat": user.numpy(), "support_items": np.asarray(items, np.int64),
                "support_ratings": np.asarray(ratings, np.float32),
                "support_mask": np.asarray(mask, np.float32), "candidate_items": cands.numpy()}
        want = adapted_scores(model, adaptation, user, torch.as_tensor(feed["support_items"]),
                              torch.as_tensor(feed["support_ratings"]),
                              torch.as_tensor(feed["support_mask"]), cands).numpy()
        got = sess.run(["scores"], feed)[0]
        np.testing.assert_allclose(got, want, atol=1e-4)
        return want

    weighted = run([3, 8, 11], [5.0, 1.0, 4.0], [2.0, 1.0, 0.5])
    if name == "ridge":  # the penalised sum: weight 2 == the rating twice (weights 1, 1)
        twice = run([3, 3, 8, 11, 11], [5.0, 5.0, 1.0, 4.0, 4.0], [1.0, 1.0, 1.0, 0.25, 0.25])
        np.testing.assert_allclose(weighted, twice, atol=1e-4)
