"""Meta-training throughput: batched torch.func learner vs a per-task Python loop (MeLU's code).

A MeLU-shaped model on a synthetic MovieLens-1M-sized setup (6,040 users with gender, age,
occupation, zip; 3,706 items with rate, year, genre/director/actor bags and a 384-d text
embedding), second-order MeLU updates (decision layers adapted, 1 inner step). For each task
batch size it times meta-training steps of

- ``batched``: metarec's learner (towers once per batch, ``vmap`` over tasks), and
- ``loop``: MeLU's structure: for each task, autograd.grad(create_graph=True) on the decision
  layers, a local update, the query loss, then one backward over the summed losses,

and prints tasks/s as JSON. ``python benchmarks/train_throughput.py --device cpu --steps 5``
runs on a CPU; the default device is cuda when present.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from metarec.config import MetaConfig, ModelConfig
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.meta.inner import TaskBatch, make_batch
from metarec.meta.learners import build_learner
from metarec.models.estimator import Estimator, build_model


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


def time_steps(fn, steps: int, device: torch.device) -> float:
    """Seconds per step of ``fn`` (one warm-up step excluded)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--support", type=int, default=20)
    parser.add_argument("--query", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (cuda only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    features, tasks = synthetic_ml1m(0, max(args.batches), args.support, args.query)
    model = build_model(features, ModelConfig()).to(device)
    meta = MetaConfig(learner="melu", inner_steps=1, inner_lr=5e-3)
    learner = build_learner(model, meta).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    results = []
    for size in args.batches:
        batch = make_batch(model.user_table, tasks, np.arange(size), device)

        def step(loss_fn) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=args.amp and device.type == "cuda"):
                loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        batched = time_steps(lambda: step(lambda: learner.meta_loss(model, batch)), args.steps, device)
        loop = time_steps(lambda: step(lambda: loop_meta_loss(model, batch, meta.inner_lr)),
                          args.steps, device)
        results.append({"tasks_per_batch": size, "batched_tasks_per_s": size / batched,
                        "loop_tasks_per_s": size / loop, "speedup": loop / batched})
    print(json.dumps({"device": str(device), "name": torch.cuda.get_device_name(device)
                      if device.type == "cuda" else "cpu", "steps": args.steps,
                      "support": args.support, "query": args.query, "amp": args.amp,
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
