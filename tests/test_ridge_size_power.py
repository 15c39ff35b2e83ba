"""``meta.ridge_size_power``: ridge penalties that scale with the support size. The penalties by
hand, the closed form against a direct solve with each task's own penalties, the meta-gradient
reaching the exponents, the plain learner unchanged, and ONNX parity in model.onnx and in the
catalog's user graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.adaptation.kinds import adapted_scores
from metarec.adaptation.ridge import SIZE_REF, ridge_head, size_penalties
from metarec.adaptation.spec import Adaptation
from metarec.catalog.artifact import read_catalog
from metarec.catalog.scoring import CatalogGraphs
from metarec.config import config_from_dict
from metarec.export import export_onnx, parity_check
from metarec.meta.learners import build_learner
from tests.test_models import plain_meta
from tests.test_ridge_factors import _model


def _powered(seed: int, power: tuple[float, float] = (-0.7, 1.3)):
    """The head_factors model of test_ridge_factors with a size-powered ridge learner whose
    exponents are set to ``power`` (weights, bias)."""
    model, features, plain = _model(seed)
    learner = build_learner(model, plain_meta(learner="ridge", ridge_lambda=0.5,
                                              ridge_bias_lambda=0.05, ridge_factor_lambda=0.5,
                                              ridge_factor_lambda_rate=1.0,
                                              ridge_size_power=True))
    with torch.no_grad():
        learner.log_lam.copy_(plain.log_lam)
        learner.size_power.copy_(torch.tensor(power) / learner.lam_rate[-1])
    return model, features, learner, plain


def test_size_penalties_by_hand() -> None:
    lam = torch.tensor([0.5, 2.0, 10.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.0, 2.0]])  # n = 2, 0, 3.5
    assert size_penalties(lam, None, mask) is lam
    power = torch.tensor([1.0, -0.5, 0.0])
    got = size_penalties(lam, power, mask)
    for row, n in enumerate((2.0, 0.0, 3.5)):
        want = lam * ((n + 1.0) / (SIZE_REF + 1.0)) ** power
        torch.testing.assert_close(got[row], want)
    torch.testing.assert_close(size_penalties(lam, torch.zeros(3), mask), lam.expand(3, -1))


def test_exponents_start_at_zero_and_leave_the_plain_learner_unchanged() -> None:
    model, _, plain = _model(1)
    powered = build_learner(model, plain_meta(learner="ridge", ridge_lambda=0.5,
                                              ridge_bias_lambda=0.05, ridge_factor_lambda=0.5,
                                              ridge_factor_lambda_rate=1.0,
                                              ridge_size_power=True))
    assert plain.size_power is None and plain.adaptation().ridge_size_power is None
    assert "size_power" not in plain.state_dict() and "size_power" in powered.state_dict()
    with torch.no_grad():
        powered.log_lam.copy_(plain.log_lam)
    power = powered.ridge_size_power().detach()
    assert power.shape == plain.ridge_lambda().shape and float(power.abs().max()) == 0.0
    gen = torch.Generator().manual_seed(3)
    user = model.user_table[2][None].expand(2, -1)
    s_items, q_items = torch.randint(0, 30, (2, 6), generator=gen), torch.randint(0, 30, (2, 9), generator=gen)
    ratings, mask = torch.randint(1, 6, (2, 6), generator=gen).float(), torch.ones(2, 6)
    args = (model.embed(user, s_items), s_items, ratings, mask, model.embed(user, q_items), q_items)
    with torch.no_grad():
        torch.testing.assert_close(ridge_head(model, *args, plain.ridge_lambda()),
                                   ridge_head(model, *args, powered.ridge_lambda(), "mse", power))


def test_closed_form_uses_each_tasks_own_penalties_and_the_exponents_learn() -> None:
    """Two tasks of 7 and 3 ratings: each equals the ridge solve with lam * ((n+1)/11)^p; the
    query loss has a gradient with respect to both exponents."""
    model, _, learner, _ = _powered(3)
    lam, power = learner.ridge_lambda().detach(), learner.ridge_size_power().detach()
    assert torch.allclose(power[:-1], torch.tensor(-0.7)) and float(power[-1]) == pytest.approx(1.3)
    gen = torch.Generator().manual_seed(9)
    user = model.user_table[4]
    s_items, q_items = torch.randint(0, 30, (2, 7), generator=gen), torch.arange(30)
    ratings = torch.randint(1, 6, (2, 7), generator=gen).float()
    mask = torch.ones(2, 7)
    mask[1, 3:] = 0.0
    users = user[None].expand(2, -1)
    queries = q_items[None].expand(2, -1)
    scores = ridge_head(model, model.embed(users, s_items), s_items, ratings, mask,
                        model.embed(users, queries), queries, learner.ridge_lambda(), "mse",
                        learner.ridge_size_power())
    (scores ** 2).mean().backward()
    assert learner.size_power.grad is not None and bool((learner.size_power.grad != 0).all())
    for n in range(2):
        own = lam * ((mask[n].sum() + 1.0) / (SIZE_REF + 1.0)) ** power
        with torch.no_grad():
            want = ridge_head(model, model.embed(user[None], s_items[n][None]), s_items[n][None],
                              ratings[n][None], mask[n][None], model.embed(user[None], q_items[None]),
                              q_items[None], own)[0]
        torch.testing.assert_close(scores[n].detach(), want, rtol=0, atol=1e-5)


def test_onnx_parity_in_model_graph_and_catalog_user_graph(tmp_path: Path) -> None:
    model, features, learner, plain = _powered(5)
    adaptation = learner.adaptation()
    assert json.dumps(adaptation.to_dict())  # JSON-able, exponents included
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    report = parity_check(model, res, adaptation, n_tasks=12, tol=1e-4, seed=2)
    assert report.passed and {0, 1} <= set(report.support_sizes), report
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    graphs, catalog = CatalogGraphs(tmp_path / "e", meta["catalog"]), read_catalog(tmp_path / "e" / "catalog")
    user = model.user_table[0]
    for rows, ratings in ((np.array([1, 4]), np.array([5.0, 2.0], np.float32)),
                          (np.arange(12), np.linspace(1, 5, 12).astype(np.float32))):
        state = graphs.adapt(catalog, user.numpy(), rows, ratings)
        want = adapted_scores(model, adaptation, user, torch.as_tensor(rows),
                              torch.as_tensor(ratings), torch.ones(len(rows)), torch.arange(30))
        other = adapted_scores(model, plain.adaptation(), user, torch.as_tensor(rows),
                               torch.as_tensor(ratings), torch.ones(len(rows)), torch.arange(30))
        assert float((want - other).abs().max()) > 1e-3  # the exponents change the scores
        np.testing.assert_allclose(graphs.scan_scores(catalog, state, slice(None)), want.numpy(),
                                   rtol=0, atol=1e-4)


def test_config_and_adaptation_checks() -> None:
    cfg = config_from_dict({"meta": {"ridge_size_power": True}}, "test")
    assert cfg.meta.ridge_size_power is True
    lam = torch.ones(4)
    with pytest.raises(ValueError, match="ridge_size_power needs ridge_lambda and its shape"):
        Adaptation(kind="ridge", learner="ridge", ridge_lambda=lam, ridge_size_power=torch.zeros(3))
