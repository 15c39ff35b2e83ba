"""Meta-training throughput: the per-task loop (MeLU's code), the plain batched step and the
fast step (metarec.training.fast) in its modes, tasks/s at each task batch size.

A MeLU-shaped model on a synthetic MovieLens-1M-sized setup (6,040 users with gender, age,
occupation, zip; 3,706 items with rate, year, genre/director/actor bags and a 384-d text
embedding), second-order MeLU updates (decision layers adapted, 1 inner step; ``--learner
ridge`` for the closed-form head). Each measured step is a whole optimizer step:

- ``loop``: MeLU's structure: for each task, autograd.grad(create_graph=True) on the decision
  layers, a local update, the query loss, then one backward over the summed losses (no resplit
  or support-size draws; slow, so only at batches <= ``--loop-max``);
- ``plain``: the training loop's own step (``train.fast_step: off``): the batch copied from the
  host, resplit and support sizes drawn, ``vmap`` over tasks, backward, clipping, AdamW;
- ``eager`` / ``compile`` / ``cuda_graph``: the same step by :class:`FastStep` (tasks held on
  the device, no host synchronisation; ``cuda_graph`` and compile's CUDA graphs on CUDA only).

Results (one row per batch size and mode, tasks/s, the speed-up over the loop) go to stdout
and, after every measurement, to ``--out`` as JSON, so a run cut short keeps what it measured::

    python benchmarks/train_throughput.py --device cpu --batches 32 256 --steps 3 \
        --modes loop plain eager --out benchmarks/results/train_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import platform
from pathlib import Path

from metarec.config import MetaConfig, ModelConfig, TrainConfig
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.meta.inner import TaskBatch, make_batch
from metarec.meta.learners import build_learner
from metarec.models.estimator import Estimator, build_model
from metarec.training.fast import WARMUP_STEPS, FastStep, make_optimizer
from metarec.training.loop import _plain_step


def synthetic_ml1m(seed: int, n_tasks: int, support: int, query: int
                   ) -> tuple[FeatureArrays, TaskArrays]:
    """Random features and tasks with MovieLens-1M's sizes (values are noise)."""
    r = np.random.default_rng(seed)
    users, items = 6040, 3706
    user_card, item_card = (3, 8, 22, 3403), (7, 82)
    bags = {"genre": (20, 6), "director": (2188, 2), "actor": (8032, 4)}
    features = FeatureArrays(
        user_ids=np.arange(users), item_ids=np.arange(items),
        user_cat=np.stack([r.integers(0, c, users) for c in user_card], 1),
        user_fields=("gender", "age", "occupation", "zip"), user_cardinality=user_card,
        item_cat=np.stack([r.integers(0, c, items) for c in item_card], 1),
        item_fields=("rate", "year"), item_cardinality=item_card,
        item_multi={k: r.integers(0, c, (items, width)) for k, (c, width) in bags.items()},
        item_multi_cardinality={k: c for k, (c, _) in bags.items()},
        item_text=r.standard_normal((items, 384)).astype(np.float32))
    sm = np.arange(support)[None] < r.integers(5, support + 1, n_tasks)[:, None]
    tasks = TaskArrays(
        user_ids=np.arange(n_tasks), user_row=r.integers(0, users, n_tasks),
        support_items=r.integers(0, items, (n_tasks, support)),
        support_ratings=r.integers(1, 6, (n_tasks, support)).astype(np.float32),
        support_mask=sm, query_items=r.integers(0, items, (n_tasks, query)),
        query_ratings=r.integers(1, 6, (n_tasks, query)).astype(np.float32),
        query_mask=np.ones((n_tasks, query), bool))
    return features, tasks


def loop_meta_loss(model: Estimator, batch: TaskBatch, lr: float) -> torch.Tensor:
    """MeLU's reference structure: one Python iteration per task, plain autograd."""
    dec = model.decision_params()
    losses = []
    for n in range(len(batch)):
        keep = batch.support_mask[n].bool()
        s_items, s_r = batch.support_items[n][keep], batch.support_ratings[n][keep]
        s_loss = ((model(batch.user_cat[n], s_items) - s_r) ** 2).mean()
        grads = torch.autograd.grad(s_loss, list(dec.values()), create_graph=True)
        fast = {k: p - lr * g for (k, p), g in zip(dec.items(), grads)}
        x = model.embed(batch.user_cat[n], batch.query_items[n])
        losses.append(((model.decide(fast, x) - batch.query_ratings[n]) ** 2).mean())
    return torch.stack(losses).mean()


def time_steps(fn, steps: int, device: torch.device, warmup: int = 1) -> float:
    """Seconds per step of ``fn`` (``warmup`` steps excluded)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


class Draws:
    """The training loop's per-step random numbers: task indices, resplit keys, support draws."""

    def __init__(self, n: int, size: int, support: int, query: int) -> None:
        self.gen, self.n, self.size, self.s, self.w = torch.Generator().manual_seed(0), n, size, support, support + query

    def __call__(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        index = torch.randperm(self.n, generator=self.gen)[:self.size].numpy()
        return (index, torch.rand(self.size, self.w, generator=self.gen),
                torch.rand(self.size, 2 + self.s, generator=self.gen))


def measure(mode: str, size: int, args, features: FeatureArrays, tasks: TaskArrays,
            device: torch.device) -> float:
    """Seconds per meta-training step of ``mode`` at ``size`` tasks per batch."""
    torch.manual_seed(0)
    model = build_model(features, ModelConfig()).to(device)
    meta = MetaConfig(learner=args.learner, inner_steps=1, inner_lr=5e-3, first_order=False)
    learner = build_learner(model, meta).to(device)
    cfg = TrainConfig(device=device.type, amp=args.amp, tasks_per_batch=size,
                      fast_step="off" if mode in ("loop", "plain") else mode)
    params = [p for m in (model, learner) for p in m.parameters()]
    opt = make_optimizer(params, cfg, device)
    draws = Draws(len(tasks), size, args.support, args.query)
    if mode == "loop":
        batch = make_batch(model.user_table, tasks, np.arange(size), device)

        def step() -> None:
            loss = loop_meta_loss(model, batch, meta.inner_lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time_steps(step, args.loop_steps, device)
    if mode == "plain":
        return time_steps(lambda: _plain_step(model, learner, opt, params, tasks, *draws(), cfg,
                                              device, None, 0), args.steps, device)
    fast = FastStep(model, learner, opt, tasks, cfg, device)
    seconds = time_steps(lambda: fast(*draws()), args.steps, device, warmup=WARMUP_STEPS + 2)
    fast.drain()  # a diverged run is an error, not a speed
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loop-steps", type=int, default=3)
    parser.add_argument("--loop-max", type=int, default=256,
                        help="largest batch the per-task loop is timed at")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256, 1024, 4096])
    parser.add_argument("--modes", nargs="+", default=["loop", "plain", "eager", "compile",
                                                       "cuda_graph"])
    parser.add_argument("--learner", default="melu", choices=["melu", "ridge"])
    parser.add_argument("--support", type=int, default=20)
    parser.add_argument("--query", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (cuda only)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (rewritten as it goes)")
    args = parser.parse_args()
    device = torch.device(args.device)
    features, tasks = synthetic_ml1m(0, max(args.batches), args.support, args.query)
    report = {"device": str(device), "name": torch.cuda.get_device_name(device)
              if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()},"
              f" {torch.get_num_threads()} threads)", "learner": args.learner,
              "second_order": True, "steps": args.steps, "support": args.support,
              "query": args.query, "amp": args.amp, "torch": torch.__version__, "results": []}
    for size in args.batches:
        row: dict = {"tasks_per_batch": size}
        for mode in args.modes:
            if (mode == "loop" and size > args.loop_max) or (
                    mode == "cuda_graph" and device.type != "cuda"):
                continue
            try:
                row[f"{mode}_tasks_per_s"] = size / measure(mode, size, args, features, tasks,
                                                            device)
            except Exception as err:  # noqa: BLE001 - recorded, the other modes still run
                row[f"{mode}_error"] = f"{type(err).__name__}: {err}"[:300]
            if "loop_tasks_per_s" in row:
                for key in [k for k in row if k.endswith("_tasks_per_s") and k != "loop_tasks_per_s"]:
                    row[key.replace("_tasks_per_s", "_speedup")] = row[key] / row["loop_tasks_per_s"]
            report["results"] = [r for r in report["results"] if r["tasks_per_batch"] != size] + [row]
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
