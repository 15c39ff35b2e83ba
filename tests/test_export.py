"""ONNX export: every registered learner's adaptation in the graph against PyTorch, zero
support, Meta-SGD rates, refusals of what has no graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from metarec.adaptation.kinds import adapted_scores
from metarec.adaptation.spec import Adaptation
from metarec.config import ModelConfig
from metarec.export import ADAPT_INPUTS, METADATA_FILE, export_onnx, parity_check
from metarec.export.runtime import session
from metarec.meta.inner import make_batch, masked_mse
from metarec.meta.learners import REGISTRY, build_learner
from metarec.models.estimator import build_model
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks


def _melu(steps: int, lr: float = 0.05, per_param_lr=None) -> Adaptation:
    """MeLU-mode gradient adaptation of a TINY model's decision MLP."""
    names = frozenset(f"decision.{i}.{k}" for i in range(3) for k in ("weight", "bias"))
    return Adaptation(kind="gradient", learner="melu", steps=steps, lr=lr, adapted=names,
                      per_param_lr=per_param_lr)


@pytest.fixture(scope="module")
def model_and_features():
    torch.manual_seed(0)
    features = tiny_features()
    return build_model(features, TINY).eval(), features


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_parity_with_adapt(model_and_features, tmp_path: Path, steps: int) -> None:
    model, features = model_and_features
    adaptation = _melu(steps)
    res = export_onnx(model, adaptation, features, tmp_path / "export")
    report = parity_check(model, res, adaptation, n_tasks=12, tol=1e-4, seed=steps)
    assert report.passed, report
    assert report.max_abs_err <= 1e-4 and report.scorer_max_abs_err <= 1e-4
    assert 0 in report.support_sizes and max(report.support_sizes) >= 10


def test_parity_fails_on_a_different_inner_rate(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    res = export_onnx(model, _melu(2, 0.05), features, tmp_path / "e")
    report = parity_check(model, res, _melu(2, 0.1), n_tasks=6)
    assert not report.passed and report.max_abs_err > 1e-4


def test_parity_tolerance_is_relative_beyond_one_and_never_loses_a_nan() -> None:
    """parity's tol bounds |err| within +-1 and |err| / |score| beyond; NaN fails outright."""
    from metarec.export.parity import _errors

    want = np.array([0.5, -4.0, 10.0], np.float32)
    err, rel = _errors(want + np.array([5e-5, 2e-4, 9e-4], np.float32), want)
    assert err == pytest.approx(9e-4, rel=1e-3) and rel == pytest.approx(9e-5, rel=1e-2)
    assert _errors(np.array([np.nan, 0.0]), np.zeros(2)) == (float("inf"), float("inf"))
    assert _errors(np.zeros(0), np.zeros(0)) == (0.0, 0.0)


def test_metasgd_per_parameter_rates(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    gen = torch.Generator().manual_seed(1)
    rates = {n: torch.rand(p.shape, generator=gen) * 0.1
             for n, p in model.decision_params().items()}
    adaptation = _melu(2, per_param_lr=rates)
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    assert parity_check(model, res, adaptation, n_tasks=8).passed


def _feed(model, items, ratings, mask, cands):
    return {"user_cat": model.user_table[3].numpy(), "support_items": np.asarray(items, np.int64),
            "support_ratings": np.asarray(ratings, np.float32),
            "support_mask": np.asarray(mask, np.float32),
            "candidate_items": np.asarray(cands, np.int64)}


def test_zero_support_is_a_no_op_and_adaptation_lowers_support_loss(model_and_features,
                                                                    tmp_path: Path) -> None:
    model, features = model_and_features
    res = export_onnx(model, _melu(3), features, tmp_path / "e")
    adapt_sess, score_sess = session(res.model_path), session(res.scorer_path)
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
    adaptation = _melu(2)
    sess = session(export_onnx(model, adaptation, features, tmp_path / "e").model_path)
    cands = np.arange(10)
    plain = sess.run(["scores"], _feed(model, [4, 7], [5.0, 1.0], [1, 1], cands))[0]
    padded = sess.run(["scores"], _feed(model, [0, 4, 9, 7], [3.0, 5.0, 2.0, 1.0],
                                        [0, 1, 0, 1], cands))[0]
    np.testing.assert_allclose(plain, padded, atol=1e-6)
    want = adapted_scores(model, adaptation, model.user_table[3], torch.tensor([4, 7]),
                          torch.tensor([5.0, 1.0]), torch.ones(2), torch.arange(10))
    np.testing.assert_allclose(plain, want.numpy(), atol=1e-5)


def test_export_files_metadata_and_graph(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    titles = {int(i): f"Movie {i}" for i in features.item_ids}
    res = export_onnx(model, _melu(1), features, tmp_path / "e", titles=titles,
                      extra={"git_sha": "abc"})
    assert sorted(p.name for p in res.out_dir.iterdir()) == [
        "catalog", "item_encoder.onnx", "metadata.json", "model.onnx", "score.onnx",
        "scorer.onnx", "user.onnx"]
    meta = json.loads(res.metadata_path.read_text())
    assert meta["item_ids"] == [int(i) for i in features.item_ids]
    assert meta["titles"][0] == f"Movie {features.item_ids[0]}"
    assert meta["user_fields"] == ["gender", "age"] and meta["extra"] == {"git_sha": "abc"}
    assert meta["adaptation"] == _melu(1).to_dict() and meta["adaptation"]["steps"] == 1
    proto = onnx.load(res.model_path)
    assert [i.name for i in proto.graph.input] == list(ADAPT_INPUTS)
    inits = {t.name: t for t in proto.graph.initializer}
    # the item tower output (item features + projected LM text) lives in the graph
    assert tuple(inits["item_feats"].dims) == (30, model.feature_dim - 2 * TINY.embedding_dim)
    assert not list((tmp_path).glob(".e.*"))  # no temporary directory left behind


def test_export_rejects_adapting_the_towers(model_and_features, tmp_path: Path) -> None:
    model, features = model_and_features
    learner = build_learner(model, plain_meta(learner="maml", adapted="all"))
    with pytest.raises(ValueError, match="cannot export learner 'maml'.*decision MLP only"):
        export_onnx(model, learner.adaptation(), features, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_parity_with_item_stats_and_a_fixed_output_bias_rate(tmp_path: Path) -> None:
    torch.manual_seed(3)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_norm=True,
                                              embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(0)
    model.fit_item_stats(torch.randint(0, 20, (200,), generator=gen),
                         torch.randint(1, 6, (200,), generator=gen).float(), 2.0,
                         user_index=torch.arange(200) % 9)
    cfg = plain_meta(learner="melu", inner_steps=2, inner_lr=0.05, output_bias_lr=0.5)
    adaptation = build_learner(model, cfg).adaptation()
    assert adaptation.per_param_lr is not None  # the fixed output-bias rate
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    report = parity_check(model, res, adaptation, n_tasks=8)
    assert report.passed, report
    # without the rates the export applies inner_lr everywhere: a different model
    plain = Adaptation(kind="gradient", learner="melu", steps=2, lr=0.05,
                       adapted=adaptation.adapted)
    assert not parity_check(model, res, plain, n_tasks=8).passed


def test_parity_with_item_offset_and_item_ids(tmp_path: Path) -> None:
    """The residual offset (item's shrunk mean) and per-item id embeddings are in the graph."""
    torch.manual_seed(4)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_offset=True, item_id=True,
                                              item_norm=True, embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(1)
    rated = torch.randint(0, 15, (200,), generator=gen)  # items 15.. never rated: "new"
    model.fit_item_stats(rated, torch.randint(1, 6, (200,), generator=gen).float(), 2.0,
                         user_index=torch.arange(200) % 9)
    n_items = features.item_cat.shape[0]
    assert model.offset(torch.arange(n_items))[:15].abs().sum() > 0
    assert torch.equal(model.offset(torch.arange(n_items))[15:], torch.zeros(n_items - 15))
    assert torch.equal(model.item_known[15:], torch.zeros(n_items - 15))
    cfg = plain_meta(learner="metasgd", inner_steps=1, inner_lr=0.05, output_bias_lr=0.5)
    adaptation = build_learner(model, cfg).adaptation()
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    report = parity_check(model, res, adaptation, n_tasks=8)
    assert report.passed, report
    # without the offset the graph would score a different model
    model.item_offset = False
    try:
        assert not parity_check(model, res, adaptation, n_tasks=8).passed
    finally:
        model.item_offset = True


@pytest.mark.parametrize("offset", [False, True])
def test_parity_of_the_ridge_learner(tmp_path: Path, offset: bool) -> None:
    """The closed-form output-layer adaptation solved in the graph (Newton-Schulz + refinement)
    matches torch.linalg.solve, zero support included."""
    torch.manual_seed(5)
    features = tiny_features()
    model = build_model(features, ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4,
                                              item_stats=True, item_offset=offset,
                                              item_norm=True, embedding_std=0.3)).eval()
    gen = torch.Generator().manual_seed(2)
    model.fit_item_stats(torch.randint(0, 25, (300,), generator=gen),
                         torch.randint(1, 6, (300,), generator=gen).float(), 2.0,
                         user_index=torch.arange(300) % 9)
    cfg = plain_meta(learner="ridge", ridge_lambda=0.5, ridge_bias_lambda=0.05)
    learner = build_learner(model, cfg)
    with torch.no_grad():  # uneven learned penalties, as after meta-training
        learner.log_lam.add_(torch.linspace(-1.0, 1.0, learner.log_lam.numel()) / learner.lam_rate)
    adaptation = learner.adaptation()
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    meta = json.loads((tmp_path / "e" / METADATA_FILE).read_text())["adaptation"]
    assert meta["learner"] == "ridge" and meta["kind"] == "ridge"
    np.testing.assert_allclose(meta["ridge_lambda"], learner.ridge_lambda().tolist(), rtol=1e-6)
    report = parity_check(model, res, adaptation, n_tasks=12)
    assert report.passed and 0 in report.support_sizes, report
    # the graph holds these penalties: others give other scores
    other = Adaptation(kind="ridge", learner="ridge", ridge_lambda=adaptation.ridge_lambda * 10)
    assert not parity_check(model, res, other, n_tasks=6).passed
    with pytest.raises(ValueError, match=f"ridge_lambda must hold {learner.log_lam.numel()} positive values"):
        export_onnx(model, Adaptation(kind="ridge", learner="ridge",
                                      ridge_lambda=-adaptation.ridge_lambda), features,
                    tmp_path / "f")
    assert not (tmp_path / "f").exists()
    with pytest.raises(ValueError, match="ridge kind needs ridge_lambda"):
        Adaptation(kind="ridge", learner="ridge")


# --------------------------------------------------------------------------- every learner

OFFSET_MODEL = ModelConfig(embedding_dim=4, hidden=(8, 8), text_proj_dim=4, item_stats=True,
                           item_offset=True, item_norm=True, embedding_std=0.3)


def _trained_looking(name: str, adapted: str):
    """A small model with item offsets and the learner ``name``, its own meta-parameters
    perturbed as after meta-training (uneven rates, penalties)."""
    torch.manual_seed(6)
    features = tiny_features()
    model = build_model(features, OFFSET_MODEL).eval()
    gen = torch.Generator().manual_seed(3)
    model.fit_item_stats(torch.randint(0, 25, (300,), generator=gen),
                         torch.randint(1, 6, (300,), generator=gen).float(), 2.0,
                         user_index=torch.arange(300) % 9)
    cfg = plain_meta(inner_steps=2, inner_lr=0.05, adapted=adapted, ridge_lambda=0.5)
    learner = build_learner(model, cfg, name)
    with torch.no_grad():
        for p in learner.parameters():
            p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
    return model, features, learner


@pytest.mark.parametrize("adapted", ["decision", "all"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_learner_exports_with_parity_or_is_refused(name: str, adapted: str,
                                                                    tmp_path: Path) -> None:
    """The registry, not a hand-kept list: each learner's graph matches its PyTorch adaptation
    on tasks with 0, 1 and several support ratings, or export refuses it and says why."""
    model, features, learner = _trained_looking(name, adapted)
    adaptation = learner.adaptation()
    if not adaptation.exportable:
        assert adapted == "all" and "decision MLP only" in adaptation.not_exportable
        with pytest.raises(ValueError, match=f"cannot export learner {name!r}"):
            export_onnx(model, adaptation, features, tmp_path / "e")
        assert not (tmp_path / "e").exists()
        return
    res = export_onnx(model, adaptation, features, tmp_path / "e")
    report = parity_check(model, res, adaptation, n_tasks=12, tol=1e-4, seed=1)
    assert report.passed, report
    assert {0, 1} <= set(report.support_sizes) and max(report.support_sizes) >= 5
    meta = json.loads(res.metadata_path.read_text())["adaptation"]
    assert meta["learner"] == name and meta["kind"] == adaptation.kind


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_adaptation_reference_is_what_the_learner_predicts(name: str) -> None:
    """``adapted_scores`` (what parity compares the graph with) equals the learner's own
    ``predict``, task by task, unpadded."""
    model, _, learner = _trained_looking(name, "decision")
    tasks = tiny_tasks(2)
    with torch.no_grad():
        batch_scores = learner.predict(model, make_batch(model.user_table, tasks))
    adaptation = learner.adaptation()
    for n in range(len(tasks)):
        sm, qm = tasks.support_mask[n], tasks.query_mask[n]
        want = adapted_scores(model, adaptation, model.user_table[int(tasks.user_row[n])],
                              torch.as_tensor(tasks.support_items[n][sm]),
                              torch.as_tensor(tasks.support_ratings[n][sm]),
                              torch.ones(int(sm.sum())), torch.as_tensor(tasks.query_items[n]))
        torch.testing.assert_close(batch_scores[n][torch.as_tensor(qm)], want[qm],
                                   rtol=1e-5, atol=1e-5)


def test_lazy_export_names_match_all_and_resolve() -> None:
    import metarec.export as export

    assert sorted(export.__all__) == sorted(export._LAZY)
    for name in export.__all__:
        assert getattr(export, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        export.nope  # noqa: B018
