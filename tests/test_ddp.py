"""DDP on CPU (gloo, 2 processes): after training steps, every rank holds the parameters a
single process reaches on the combined batches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metarec.config import TrainConfig
from metarec.training.distributed import World
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.training.loop import meta_train
from tests.test_models import TINY, plain_meta, tiny_features, tiny_tasks

CFG = TrainConfig(lr=1e-2, tasks_per_batch=4, max_steps=3, eval_every=100, patience=100,
                  checkpoint_every=0, device="cpu", progress=False, eval_batch=4)
META = plain_meta(learner="maml", inner_steps=1, inner_lr=0.05)


def _train(world: World | None):
    torch.manual_seed(0)
    model = build_model(tiny_features(), TINY)
    learner = build_learner(model, META)
    meta_train(model, learner, tiny_tasks(0, n=12), tiny_tasks(1, n=4), CFG, seed=3,
               world=world)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank: int, size: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        torch.save(_train(World(rank, size)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_combined_batch(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path / "state")), nprocs=2,
             join=True)
    single = _train(None)
    worst = 0.0
    for rank in range(2):
        got = torch.load(tmp_path / f"state.{rank}", weights_only=True)
        for name, value in single.items():
            if value.is_floating_point():
                worst = max(worst, float((got[name] - value).abs().max()))
    print(f"DDP parity: max |param difference| = {worst:.3g}")
    assert worst < 1e-5


def test_batch_must_split_evenly():
    import numpy as np

    with pytest.raises(ValueError, match="multiple of the number of processes"):
        World(0, 3).shard(np.arange(4))
    assert World(1, 2).shard(np.arange(6)).tolist() == [1, 3, 5]


def test_no_launcher_means_no_group(monkeypatch):
    from metarec.training.distributed import init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() is None and not dist.is_initialized()
    assert os.environ.get("WORLD_SIZE") is None
