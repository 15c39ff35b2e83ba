"""The fast meta-training step (metarec.training.fast): the plain path's results, step by step.

On a CPU every mode of ``train.fast_step`` must end with the parameters of the plain loop for
the same seed (same draws, same arithmetic); on a GPU (marker ``gpu``) the eager, compiled and
CUDA-graph steps run without one host synchronisation and agree with each other.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metarec.config import TrainConfig
from metarec.data.arrays import TaskArrays
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.fast import FastStep, make_optimizer
from metarec.training.loop import _plain_step, meta_train
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks

CFG = TrainConfig(lr=1e-2, tasks_per_batch=4, max_steps=6, eval_every=3, patience=100,
                  checkpoint_every=0, device="cpu", progress=False)
LEARNERS = {
    "ridge": dict(learner="ridge"),
    "melu": dict(learner="melu", inner_steps=2, inner_lr=0.05),
    "maml": dict(learner="maml", inner_steps=1, inner_lr=0.05),  # every parameter adapts
    "metasgd": dict(learner="metasgd", inner_steps=1, inner_lr=0.05),
}


def implicit_arrays(seed: int, n: int, support: int = 6, query: int = 5, users: int = 12,
                    items: int = 30) -> TaskArrays:
    """Implicit TaskArrays: 0/1 labels, boolean masks and confidence weights beside them."""
    r = np.random.default_rng(seed)

    def side(width: int):
        real = np.arange(width)[None] < r.integers(3, width + 1, n)[:, None]
        labels = (r.random((n, width)) < 0.4).astype(np.float32)
        labels[:, 0], labels[:, 1] = 1.0, 0.0  # a positive and a negative in every task
        weights = np.where(labels > 0, 1 + 2 * r.random((n, width)), 1.0).astype(np.float32)
        return (np.where(real, r.integers(0, items, (n, width)), 0),
                np.where(real, labels, 0).astype(np.float32), real, weights)

    si, sl, sm, sw = side(support)
    qi, ql, qm, qw = side(query)
    return TaskArrays(user_ids=np.arange(n), user_row=r.integers(0, users, n),
                      support_items=si, support_ratings=sl, support_mask=sm, query_items=qi,
                      query_ratings=ql, query_mask=qm, support_weights=sw, query_weights=qw)


def _run(name: str, mode: str, implicit: bool, cfg: TrainConfig = CFG, **kw):
    overrides = dict(LEARNERS[name], loss="bce" if implicit else "mse", **kw)
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    learner = build_learner(model, plain_meta(**overrides))
    if implicit:
        train, valid = implicit_arrays(0, 20), implicit_arrays(1, 6)
    else:
        train, valid = tiny_tasks(0, n=20), tiny_tasks(1, n=6)
    losses: list[tuple[int, float]] = []
    result = meta_train(model, learner, train, valid, dataclasses.replace(cfg, fast_step=mode),
                        seed=3, callbacks=[lambda s, m: "train_loss" in m
                                           and losses.append((s, m["train_loss"]))])
    return result, losses, model


@pytest.mark.parametrize("name,implicit", [(n, False) for n in LEARNERS]
                         + [(n, True) for n in ("ridge", "melu", "maml")])
def test_eager_fast_step_gives_the_plain_parameters(name: str, implicit: bool) -> None:
    plain, plain_losses, model = _run(name, "off", implicit)
    fast, fast_losses, _ = _run(name, "eager", implicit)
    assert fast.steps == plain.steps == CFG.max_steps
    torch.manual_seed(0)
    init = build_model(tiny_features(), TINY).state_dict()
    changed = any(not torch.equal(init[k], v) for k, v in plain.model_state.items()
                  if k in init and v.is_floating_point())
    assert changed, "training moved no parameter: the comparison would prove nothing"
    for ours, theirs in ((fast.model_state, plain.model_state),
                         (fast.learner_state, plain.learner_state)):
        assert ours.keys() == theirs.keys()
        for k, v in theirs.items():
            torch.testing.assert_close(ours[k], v, rtol=1e-6, atol=1e-6, msg=k)
    assert [h["valid_mae"] for h in fast.history] == pytest.approx(
        [h["valid_mae"] for h in plain.history], abs=1e-6)
    # Plain: every step's loss; fast: the mean of each eval_every window, read once per window.
    assert [s for s, _ in fast_losses] == [3, 6]
    per_step = np.array([v for _, v in plain_losses])
    assert [v for _, v in fast_losses] == pytest.approx(per_step.reshape(2, 3).mean(1), rel=1e-5)


def test_fast_step_draws_support_sizes_on_the_device_and_matches_plain_step_by_step() -> None:
    """FastStep itself against the plain step, compiled through dynamo + AOTAutograd
    (``aot_eager``: the traced graphs of the compile mode without Inductor's code generation),
    with resplits and support-size draws: after 4 steps the parameters agree."""
    cfg = dataclasses.replace(CFG, fast_step="compile")
    train = tiny_tasks(0, n=20)
    states = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_features(), TINY)
        learner = build_learner(model, plain_meta(**LEARNERS["melu"]))
        params = [p for m in (model, learner) for p in m.parameters()]
        opt = make_optimizer(params, cfg, torch.device("cpu"))
        step = (FastStep(model, learner, opt, train, cfg, torch.device("cpu"),
                         compile_backend="aot_eager") if fast else None)
        gen = torch.Generator().manual_seed(5)
        for i in range(4):
            index = torch.randperm(20, generator=gen)[:cfg.tasks_per_batch].numpy()
            keys = torch.rand(len(index), 10, generator=gen)
            draws = torch.rand(len(index), 8, generator=gen)
            if fast:
                step(index, keys, draws)
            else:
                _plain_step(model, learner, opt, params, train, index, keys, draws, cfg,
                            torch.device("cpu"), None, i)
        if fast:
            mean, n = step.drain()
            assert n == 4 and np.isfinite(mean)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["melu", "ridge"])
def test_compiled_fast_step_gives_the_plain_parameters(name: str) -> None:
    """``train.fast_step: compile`` with Inductor on a CPU (about a minute to compile)."""
    plain, _, _ = _run(name, "off", False)
    fast, _, _ = _run(name, "compile", False)
    for k, v in plain.model_state.items():
        torch.testing.assert_close(fast.model_state[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_a_non_finite_loss_stops_the_fast_run_at_the_next_report() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    learner = build_learner(model, plain_meta(**LEARNERS["melu"]))
    with torch.no_grad():
        model.decision[0].weight[0, 0] = float("nan")
    cfg = dataclasses.replace(CFG, fast_step="eager")
    with pytest.raises(FloatingPointError, match="not finite"):
        meta_train(model, learner, tiny_tasks(0, n=20), tiny_tasks(1, n=6), cfg, seed=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_graph_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="'cuda_graph' needs a CUDA device"):
        _run("melu", "cuda_graph", False)


def test_an_unknown_mode_is_named() -> None:
    from metarec.training.fast import check_mode

    with pytest.raises(ValueError, match="'graph'"):
        check_mode("graph", torch.device("cpu"))


# --------------------------------------------------------------------------- GPU


def _gpu_run(mode: str, amp: bool, name: str = "melu", steps: int = 8):
    cfg = dataclasses.replace(CFG, device="cuda", amp=amp, max_steps=steps, eval_every=4,
                              tasks_per_batch=8)
    return _run(name, mode, False, cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["melu", "ridge"])
def test_gpu_cuda_graph_and_compile_agree_with_eager_without_host_syncs(name: str) -> None:
    eager, _, _ = _gpu_run("eager", amp=False, name=name)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        graph, _, model = _gpu_run("cuda_graph", amp=False, name=name)
        compiled, _, _ = _gpu_run("compile", amp=False, name=name)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert next(model.parameters()).is_cuda
    for other in (graph, compiled):
        for k, v in eager.model_state.items():
            torch.testing.assert_close(other.model_state[k], v, rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_steps_run_without_a_host_synchronisation() -> None:
    """After warm-up and capture, eager and CUDA-graph steps under sync debug mode "error"."""
    device = torch.device("cuda")
    for mode in ("eager", "cuda_graph"):
        cfg = dataclasses.replace(CFG, device="cuda", amp=True, fast_step=mode, tasks_per_batch=8)
        torch.manual_seed(0)
        model = build_model(tiny_features(), TINY).to(device)
        learner = build_learner(model, plain_meta(**LEARNERS["ridge"])).to(device)
        params = [p for m in (model, learner) for p in m.parameters()]
        step = FastStep(model, learner, make_optimizer(params, cfg, device),
                        tiny_tasks(0, n=20), cfg, device)
        gen = torch.Generator().manual_seed(0)

        def one() -> None:
            index = torch.randperm(20, generator=gen)[:8].numpy()
            step(index, torch.rand(8, 10, generator=gen), torch.rand(8, 8, generator=gen))
        for _ in range(5):  # warm-up and capture
            one()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                one()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        mean, n = step.drain()
        assert n == 10 and np.isfinite(mean)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_fast_steps_train() -> None:
    for mode in ("eager", "cuda_graph"):
        result, losses, _ = _gpu_run(mode, amp=True, name="ridge", steps=12)
        assert np.isfinite(result.best_valid_mae) and len(losses) == 3


# --------------------------------------------------------------------------- fused embedding


def _reference_towers(model, user_cat: torch.Tensor, items: torch.Tensor):
    """The towers' embedding part as the per-field layout computed it: one nn.Embedding per
    field and bag (weights copied from the fused table's segments)."""
    from torch import nn

    def table(view) -> nn.Embedding:
        emb = nn.Embedding(view.num_embeddings, view.embedding_dim, padding_idx=view.padding_idx)
        emb.weight = nn.Parameter(view.weight.detach().clone())
        return emb
    users = [table(v) for v in model.user_emb]
    fields = [table(v) for v in model.item_emb]
    bags = {n: table(v) for n, v in model.bag_emb.items()}
    u = torch.cat([e(user_cat[..., f]) for f, e in enumerate(users)], -1)
    cat = model.item_table[items]
    parts = [e(cat[..., f]) for f, e in enumerate(fields)]
    for n, e in bags.items():
        bag = getattr(model, f"item_bag_{n}")[items]
        real = (bag != 0).unsqueeze(-1)
        parts.append((e(bag) * real).sum(-2) / real.sum(-2).clamp(min=1))
    return u, torch.cat(parts, -1), [*users, *fields, *bags.values()]


def test_fused_embedding_equals_the_per_field_tables_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    user_cat = model.user_table[torch.tensor([0, 3, 7])]
    items = torch.randint(0, 30, (3, 5))
    ref_u, ref_i, tables = _reference_towers(model, user_cat, items)
    fi = 4 * (1 + 1)  # the year field and the genre bag, 4 wide each (then the text part)
    torch.testing.assert_close(model.user_embed(user_cat), ref_u, rtol=0, atol=0)
    torch.testing.assert_close(model.item_embed(items)[..., :fi], ref_i, rtol=0, atol=0)
    (model.user_embed(user_cat).square().sum() + model.item_embed(items)[..., :fi].sum()).backward()
    (ref_u.square().sum() + ref_i.sum()).backward()
    grads = torch.cat([t.weight.grad for t in tables], 0)
    torch.testing.assert_close(model.emb.weight.grad, grads, rtol=1e-6, atol=1e-7)


def test_fused_table_is_initialised_like_the_per_field_tables() -> None:
    """Same seed, same weights as nn.Embedding per field in the former order (users, item
    fields, bags with a zero padding row): trained results stay reproducible across the change."""
    from torch import nn

    features = tiny_features()
    torch.manual_seed(0)
    model = build_model(features, TINY)
    torch.manual_seed(0)
    expected = [nn.Embedding(c, 4).weight for c in features.user_cardinality]
    expected += [nn.Embedding(c, 4).weight for c in features.item_cardinality]
    expected += [nn.Embedding(6, 4, padding_idx=0).weight]
    views = [*model.user_emb, *model.item_emb, *model.bag_emb.values()]
    for view, weight in zip(views, expected, strict=True):
        assert torch.equal(view.weight, weight)


def test_state_dict_keeps_the_per_field_keys_and_loads_them_back() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    state = model.state_dict()
    assert "emb.weight" not in state
    assert {"user_emb.0.weight", "user_emb.1.weight", "item_emb.0.weight",
            "bag_emb.genre.weight"} <= set(state)
    assert state["user_emb.1.weight"].shape == (5, 4)
    torch.manual_seed(1)
    other = build_model(tiny_features(), TINY)
    other.load_state_dict(state)  # a checkpoint of the per-field layout
    assert torch.equal(other.emb.weight, model.emb.weight)
    bad = dict(state, **{"bag_emb.genre.weight": torch.zeros(7, 4)})
    with pytest.raises(RuntimeError, match=r"bag_emb\.genre\.weight.*\(7, 4\)"):
        other.load_state_dict(bad)
