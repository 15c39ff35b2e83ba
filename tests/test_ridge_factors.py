"""The ridge head reading the item factors (``model.head_factors``): its closed form against a
direct least-squares solve, ONNX parity (zero support included), and the configuration checks."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import Tensor

from metarec.adaptation.ridge import ITEM_FACTORS, ridge_head
from metarec.adaptation.spec import Adaptation
from metarec.config import ModelConfig
from metarec.export import export_onnx, parity_check
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from tests.test_models import plain_meta, tiny_features

FACTORS = 3
MODEL = ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4, item_stats=True,
                    item_offset=True, item_norm=True, embedding_std=0.3,
                    item_factors=FACTORS, head_factors=True)


def _model(seed: int = 0):
    """A tiny head_factors model fitted on random ratings of items 0..19 by 8 users (items
    20.. have no training rating), and its ridge learner with uneven penalties."""
    torch.manual_seed(seed)
    features = tiny_features()
    model = build_model(features, MODEL).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    items = torch.randint(0, 20, (160,), generator=gen)
    model.fit_item_stats(items, torch.randint(1, 6, (160,), generator=gen).double(), 2.0,
                         user_index=torch.randint(0, 8, (160,), generator=gen))
    learner = build_learner(model, plain_meta(learner="ridge", ridge_lambda=0.5,
                                              ridge_bias_lambda=0.05, ridge_factor_lambda=0.5,
                                              ridge_factor_lambda_rate=1.0))
    with torch.no_grad():
        learner.log_lam.add_(torch.linspace(-1.0, 1.0, learner.log_lam.numel()) / learner.lam_rate)
    return model, features, learner


def test_the_penalties_cover_the_factors_and_unrated_items_have_none() -> None:
    model, _, learner = _model()
    assert model.head_width == 8 + FACTORS
    assert learner.ridge_lambda().shape == (8 + FACTORS + 1,)
    fac = model.head_features(torch.arange(30))
    assert fac.shape == (30, FACTORS)
    assert float(fac[20:].abs().max()) == 0.0 and float(fac[:20].abs().max()) > 0.1
    with pytest.raises(ValueError, match="head_factors needs item_factors"):
        build_model(tiny_features(), ModelConfig(embedding_dim=4, hidden=(8,), text_proj_dim=4,
                                                 item_factors=0, head_factors=True))


@pytest.mark.parametrize("rate,bad", [(1.0, dict(ridge_factor_lambda_rate=0.0)),
                                      (5.0, dict(ridge_lambda_rate=-1.0))])
def test_penalties_start_at_their_own_values_and_move_rate_times_faster(rate, bad) -> None:
    """Factor penalties move ridge_factor_lambda_rate (20) times faster, the others
    ridge_lambda_rate times; the starting values do not depend on either rate."""
    model, _, _ = _model()
    cfg = plain_meta(learner="ridge", ridge_lambda=0.5, ridge_bias_lambda=0.05,
                     ridge_factor_lambda=7.0, ridge_factor_lambda_rate=20.0,
                     ridge_lambda_rate=rate)
    learner = build_learner(model, cfg)
    lam = learner.ridge_lambda().detach()
    torch.testing.assert_close(lam, torch.tensor([0.5] * 8 + [7.0] * FACTORS + [0.05]))
    with torch.no_grad():
        learner.log_lam.add_(0.01)
    ratio = learner.ridge_lambda().detach() / lam
    step = 0.01 * rate
    torch.testing.assert_close(ratio, torch.tensor([step] * 8 + [0.2] * FACTORS + [step]).exp())
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_learner(model, plain_meta(learner="ridge", **bad))


def test_closed_form_equals_a_direct_least_squares_solve() -> None:
    """dw = argmin ||m (r - offset - H w0 - H dw)||^2 + sum lam dw^2 over H = [hidden, q_i, 1],
    solved as the stacked least-squares problem [sqrt(m) H; sqrt(lam) I] dw = [sqrt(m) e; 0]."""
    model, _, learner = _model(3)
    lam = learner.ridge_lambda().detach()
    gen = torch.Generator().manual_seed(9)
    user = model.user_table[4]
    s_items, q_items = torch.randint(0, 30, (2, 7), generator=gen), torch.arange(30)
    ratings = torch.randint(1, 6, (2, 7), generator=gen).float()
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0.0  # padding slots
    with torch.no_grad():
        got = ridge_head(model, model.embed(user[None].expand(2, -1), s_items), s_items, ratings,
                         mask, model.embed(user[None].expand(2, -1), q_items[None].expand(2, -1)),
                         q_items[None].expand(2, -1), lam)
        last = model.decision[-1]
        w0 = torch.cat([last.weight[0], torch.zeros(FACTORS), last.bias]).double()

        def feats(items):
            h = model.embed(user, items)
            for layer in model.decision[:-1]:
                h = torch.relu(layer(h))
            return torch.cat([h, model.item_fac[items], torch.ones(len(items), 1)], 1).double()

        for n in range(2):
            keep = mask[n].bool()
            hs, hq = feats(s_items[n][keep]), feats(q_items)
            e = ratings[n][keep].double() - model.offset(s_items[n][keep]).double() - hs @ w0
            a = torch.cat([hs, torch.diag(lam.double().sqrt())])
            b = torch.cat([e, torch.zeros(len(lam), dtype=torch.float64)])
            dw = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
            assert float(dw[8:8 + FACTORS].abs().max()) > 1e-3  # the factors take part
            want = model.offset(q_items).double() + hq @ (w0 + dw)
            torch.testing.assert_close(got[n].double(), want, rtol=0, atol=1e-4)


def test_onnx_parity_with_the_item_factors_zero_support_included(tmp_path: Path) -> None:
    model, features, learner = _model(5)
    adaptation = learner.adaptation()
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    names = {t.name for t in onnx.load(str(res.model_path)).graph.initializer}
    assert ITEM_FACTORS in names
    report = parity_check(model, res, adaptation, n_tasks=12, tol=1e-4, seed=2)
    assert report.passed and {0, 1} <= set(report.support_sizes), report
    short = Adaptation(kind="ridge", learner="ridge", ridge_lambda=adaptation.ridge_lambda[FACTORS:])
    with pytest.raises(ValueError, match=f"ridge_lambda must hold {8 + FACTORS + 1} positive"):
        export_onnx(model, short, features, tmp_path / "f")


def test_als_refinement_fits_the_observed_ratings_of_a_low_rank_matrix() -> None:
    """Rank-2 user-centred ratings with 60% missing: PureSVD (zero-filled) fits the observed
    residuals poorly, ALS sweeps fit them far better; unrated items stay zero, unit RMS."""
    from metarec.models.fitting import als_refine, pure_svd

    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(40, 2, generator=gen), torch.randn(25, 2, generator=gen)
    q[24] = 0.0
    full = p @ q.T
    full = full - full[:, :24].mean(1, keepdim=True)  # centred over the rated items
    seen = (torch.rand(40, 24, generator=gen) < 0.4)
    users, items = seen.nonzero(as_tuple=True)
    r = (3.0 + full[users, items]).double()
    svd = pure_svd(items, r, users, 25, 2)

    def fit_err(fac: Tensor) -> float:  # best user factors by least squares, observed entries
        err = 0.0
        for u in range(40):
            sel = users == u
            x, y = fac[items[sel]], r[sel] - r[sel].mean()
            w = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
            err += float(((x @ w - y) ** 2).sum())
        return err / len(r)

    als = als_refine(items, r, users, svd, reg=1e-3, sweeps=20)
    assert float(als[24].abs().max()) == 0.0
    torch.testing.assert_close(als[:24].pow(2).mean(), torch.tensor(1.0, dtype=torch.float64))
    # (not exactly zero: centring on each user's observed mean adds a per-user constant)
    assert fit_err(als) < 0.3 * fit_err(svd)
    assert als_refine(items, r, users, svd, reg=1.0, sweeps=0) is svd
