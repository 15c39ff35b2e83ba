"""ONNX export: the in-graph inner loop against torch.func ``adapt``, zero support, Meta-SGD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from metarec.config import MetaConfig
from metarec.export import (ADAPT_INPUTS, export_onnx, parity_check, cpu_session,
                            torch_reference)
from metarec.meta.inner import masked_mse
from metarec.models.estimator import build_model
from tests.test_models import TINY, tiny_features


@pytest.fixture(scope="module")
def model_and_features():
    torch.manual_seed(0)
    features = tiny_features()
    return build_model(features, TINY).eval(), features


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_parity_with_adapt(model_and_features, tmp_path: Path, steps: int) -> None:
    model, features = model_and_features
    cfg = MetaConfig(inner_steps=steps, inner_lr=0.05)
    res = export_onnx(model, features, cfg, tmp_path / "export")
    report = parity_check(model, res, cfg, n_tasks=12, tol=1e-4, seed=steps)
    assert report.passed, report
    assert report.max_abs_err <= 1e-4 and report.scorer_max_abs_err <= 1e-4
    assert 0 in report.support_sizes and max(report.support_sizes) >= 10


def test_parity_fails_on_a_different_inner_rate(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    res = export_onnx(model, features, MetaConfig(inner_steps=2, inner_lr=0.05), tmp_path / "e")
    report = parity_check(model, res, MetaConfig(inner_steps=2, inner_lr=0.1), n_tasks=6)
    assert not report.passed and report.max_abs_err > 1e-4


def test_metasgd_per_parameter_rates(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    gen = torch.Generator().manual_seed(1)
    rates = {n: torch.rand(p.shape, generator=gen) * 0.1
             for n, p in model.decision_params().items()}
    cfg = MetaConfig(learner="metasgd", inner_steps=2, inner_lr=0.05)
    res = export_onnx(model, features, cfg, tmp_path / "e", per_param_lr=rates)
    assert parity_check(model, res, cfg, n_tasks=8, per_param_lr=rates).passed


def _feed(model, items, ratings, mask, cands):
    return {"user_cat": model.user_table[3].numpy(), "support_items": np.asarray(items, np.int64),
            "support_ratings": np.asarray(ratings, np.float32),
            "support_mask": np.asarray(mask, np.float32),
            "candidate_items": np.asarray(cands, np.int64)}


def test_zero_support_is_a_no_op_and_adaptation_lowers_support_loss(model_and_features,
                                                                    tmp_path: Path) -> None:
    model, features = model_and_features
    cfg = MetaConfig(inner_steps=3, inner_lr=0.05)
    res = export_onnx(model, features, cfg, tmp_path / "e")
    adapt_sess, score_sess = cpu_session(res.model_path), cpu_session(res.scorer_path)
    cands = np.arange(30)
    base = score_sess.run(["scores"], {"user_cat": model.user_table[3].numpy(),
                                       "candidate_items": cands})[0]
    for items, ratings, mask in (([], [], []), ([4, 7], [5.0, 1.0], [0, 0])):
        got = adapt_sess.run(["scores"], _feed(model, items, ratings, mask, cands))[0]
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, base, atol=1e-6)
    items, ratings = [4, 7, 9, 11], [5.0, 1.0, 5.0, 2.0]
    got = adapt_sess.run(["scores"], _feed(model, items, ratings, [1] * 4, items))[0]
    before = base[items]
    r = torch.tensor(ratings)
    one = torch.ones(4)
    assert masked_mse(torch.tensor(got), r, one) < masked_mse(torch.tensor(before), r, one)


def test_padding_slots_do_not_count(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05)
    sess = cpu_session(export_onnx(model, features, cfg, tmp_path / "e").model_path)
    cands = np.arange(10)
    plain = sess.run(["scores"], _feed(model, [4, 7], [5.0, 1.0], [1, 1], cands))[0]
    padded = sess.run(["scores"], _feed(model, [0, 4, 9, 7], [3.0, 5.0, 2.0, 1.0],
                                        [0, 1, 0, 1], cands))[0]
    np.testing.assert_allclose(plain, padded, atol=1e-6)
    want = torch_reference(model, cfg, model.user_table[3], torch.tensor([4, 7]),
                           torch.tensor([5.0, 1.0]), torch.ones(2), torch.arange(10))
    np.testing.assert_allclose(plain, want.numpy(), atol=1e-5)


def test_export_files_metadata_and_graph(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    titles = {int(i): f"Movie {i}" for i in features.item_ids}
    res = export_onnx(model, features, MetaConfig(inner_steps=1), tmp_path / "e", titles=titles,
                      extra={"git_sha": "abc"})
    assert sorted(p.name for p in res.out_dir.iterdir()) == [
        "metadata.json", "model.onnx", "scorer.onnx"]
    meta = json.loads(res.metadata_path.read_text())
    assert meta["item_ids"] == [int(i) for i in features.item_ids]
    assert meta["titles"][0] == f"Movie {features.item_ids[0]}"
    assert meta["user_fields"] == ["gender", "age"] and meta["extra"] == {"git_sha": "abc"}
    proto = onnx.load(res.model_path)
    assert [i.name for i in proto.graph.input] == list(ADAPT_INPUTS)
    inits = {t.name: t for t in proto.graph.initializer}
    # the item tower output (item features + projected LM text) lives in the graph
    assert tuple(inits["item_feats"].dims) == (30, model.feature_dim - 2 * TINY.embedding_dim)
    assert not list((tmp_path).glob(".e.*"))  # no temporary directory left behind


def test_export_rejects_adapting_the_towers(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    with pytest.raises(ValueError, match="decision MLP only"):
        export_onnx(model, features, MetaConfig(learner="maml", adapted="all"), tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_parity_with_item_stats_and_a_fixed_output_bias_rate(tmp_path: Path) -> None:
    from metarec.config import ModelConfig
    from metarec.meta.learners import build_learner

    torch.manual_seed(3)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_norm=True,
                                              embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(0)
    model.fit_item_stats(torch.randint(0, 20, (200,), generator=gen),
                         torch.randint(1, 6, (200,), generator=gen).float(), 2.0)
    cfg = MetaConfig(learner="melu", inner_steps=2, inner_lr=0.05, output_bias_lr=0.5)
    rates = build_learner(model, cfg)._per_param_lr()
    res = export_onnx(model, features, cfg, tmp_path / "e", per_param_lr=rates)
    report = parity_check(model, res, cfg, n_tasks=8, per_param_lr=rates)
    assert report.passed, report
    # without the rates the export applies inner_lr everywhere: a different model
    assert not parity_check(model, res, cfg, n_tasks=8).passed


def test_parity_with_item_offset_and_item_ids(tmp_path: Path) -> None:
    """The residual offset (item's shrunk mean) and per-item id embeddings are in the graph."""
    from metarec.config import ModelConfig
    from metarec.meta.learners import build_learner

    torch.manual_seed(4)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_offset=True, item_id=True,
                                              item_norm=True, embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(1)
    rated = torch.randint(0, 15, (200,), generator=gen)  # items 15.. never rated: "new"
    model.fit_item_stats(rated, torch.randint(1, 6, (200,), generator=gen).float(), 2.0)
    n_items = features.item_cat.shape[0]
    assert model.offset(torch.arange(n_items))[:15].abs().sum() > 0
    assert torch.equal(model.offset(torch.arange(n_items))[15:], torch.zeros(n_items - 15))
    assert torch.equal(model.item_known[15:], torch.zeros(n_items - 15))
    cfg = MetaConfig(learner="metasgd", inner_steps=1, inner_lr=0.05, output_bias_lr=0.5)
    rates = build_learner(model, cfg)._per_param_lr()
    res = export_onnx(model, features, cfg, tmp_path / "e", per_param_lr=rates)
    report = parity_check(model, res, cfg, n_tasks=8, per_param_lr=rates)
    assert report.passed, report
    # without the offset the graph would score a different model
    model.item_offset = False
    try:
        assert not parity_check(model, res, cfg, n_tasks=8, per_param_lr=rates).passed
    finally:
        model.item_offset = True


@pytest.mark.parametrize("offset", [False, True])
def test_parity_of_the_ridge_learner(tmp_path: Path, offset: bool) -> None:
    """The closed-form output-layer adaptation solved in the graph (Newton-Schulz + refinement)
    matches torch.linalg.solve, zero support included."""
    from metarec.config import ModelConfig
    from metarec.meta.learners import build_learner

    torch.manual_seed(5)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_offset=offset,
                                              item_norm=True, embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(2)
    model.fit_item_stats(torch.randint(0, 25, (300,), generator=gen),
                         torch.randint(1, 6, (300,), generator=gen).float(), 2.0)
    cfg = MetaConfig(learner="ridge", ridge_lambda=0.5, ridge_bias_lambda=0.05)
    learner = build_learner(model, cfg)
    with torch.no_grad():  # uneven learned penalties, as after meta-training
        learner.log_lam.add_(torch.linspace(-1.0, 1.0, learner.log_lam.numel()))
    lam = learner.ridge_lambda().detach()
    res = export_onnx(model, features, cfg, tmp_path / "e", ridge_lambda=lam)
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    assert meta["learner"] == "ridge" and meta["adaptation"] == "ridge"
    report = parity_check(model, res, cfg, n_tasks=12, ridge_lambda=lam)
    assert report.passed and 0 in report.support_sizes, report
    # the graph holds these penalties: others give other scores
    assert not parity_check(model, res, cfg, n_tasks=6, ridge_lambda=lam * 10).passed
    with pytest.raises(ValueError, match="ridge_lambda"):
        export_onnx(model, features, cfg, tmp_path / "f")
    assert not (tmp_path / "f").exists()
