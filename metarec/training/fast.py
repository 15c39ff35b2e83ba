"""The fast meta-training step: the whole step on the device, no host synchronisation inside.

One step of :func:`metarec.training.loop.meta_train` (``train.fast_step``): gather the task batch
from the training tasks held on the device, redraw support/query (:func:`resplit`) and support
sizes (:func:`sample_support`, on the device), the learner's meta-loss (towers once per batch in
MeLU/ridge mode, every task adapted under ``vmap``), backward, gradient clipping and the AdamW
step. The plain loop synchronises with the host in every step (``float(loss)`` for the
callbacks, ``isfinite`` to stop on a diverged loss); here the loss is summed and its finiteness
recorded on the device, and :meth:`FastStep.drain` reads both once every ``eval_every`` steps.

Modes:

- ``eager``: the step as PyTorch ops (on a GPU it still launches hundreds of small kernels);
- ``compile``: the meta-loss and the optimizer update through ``torch.compile`` (mode
  ``reduce-overhead``: CUDA graphs under the compiled code on a GPU; plain Inductor on a CPU);
- ``cuda_graph``: a few eager warm-up steps on a side stream, then the whole step (forward,
  backward, clipping, AdamW with ``capturable=True``) captured once in a CUDA graph and
  replayed: each step is three small host-to-device copies (task indices and random draws,
  from pinned memory) and one graph launch. CUDA only.

The random numbers (task order, resplit keys, support-size draws) come from the loop's seeded
host generator exactly as in the plain loop, so on a CPU every mode ends with the parameters of
the plain path (tests/test_fast_step.py) and a checkpointed run resumes the same way.
"""

from __future__ import annotations

from dataclasses import fields
import numpy as np
import torch
from torch import Tensor, nn

from metarec.config import TrainConfig
from metarec.data.arrays import TaskArrays
from metarec.meta.inner import TaskBatch, make_batch, resplit, sample_support

FAST_MODES = ("off", "eager", "compile", "cuda_graph")
WARMUP_STEPS = 3  # eager steps before a CUDA-graph capture (allocator and cuBLAS warm-up)


def check_mode(mode: str, device: torch.device, distributed: bool = False) -> None:
    """A clear error for a ``train.fast_step`` that cannot run here."""
    if mode not in FAST_MODES:
        raise ValueError(f"train.fast_step must be one of {FAST_MODES}, got {mode!r}")
    if mode == "cuda_graph" and device.type != "cuda":
        raise RuntimeError("train.fast_step 'cuda_graph' needs a CUDA device; training runs on "
                           f"{device.type} (use 'eager' or 'compile' there)")
    if distributed and mode in ("compile", "cuda_graph"):
        raise ValueError(f"train.fast_step {mode!r} does not support distributed training "
                         "(the gradient all-reduce stays outside): use 'eager' with torchrun")


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, device: torch.device
                   ) -> torch.optim.AdamW:
    """The loop's AdamW; capturable (its step counters on the device) for a CUDA graph."""
    capturable = cfg.fast_step == "cuda_graph" and device.type == "cuda"
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             capturable=capturable)


def take(tasks: TaskBatch, index: Tensor) -> TaskBatch:
    """The tasks at ``index`` (B,) int64 (on their device) of a whole-set batch."""
    return TaskBatch(**{f.name: getattr(tasks, f.name).index_select(0, index)
                        for f in fields(TaskBatch)})


class FastStep:
    """Meta-training steps of ``learner`` on ``model`` without host synchronisation.

    ``__call__(index, keys, draws)``: one optimizer step on the tasks ``index`` (B,) of
    ``train_tasks`` with the resplit keys (B, S + Q) and support draws (B, 2 + S) (None when
    ``train.resplit`` is off / ``train.support_full_prob`` is 1), the numbers the plain loop
    draws. ``drain()`` -> (mean loss, steps) since the last drain, raising FloatingPointError
    when a loss in that window was not finite.
    """

    def __init__(self, model: nn.Module, learner: nn.Module, optimizer: torch.optim.Optimizer,
                 train_tasks: TaskArrays, cfg: TrainConfig, device: torch.device,
                 compile_backend: str = "inductor", world=None) -> None:
        check_mode(cfg.fast_step, device, distributed=world is not None)
        if cfg.fast_step == "off":
            raise ValueError("FastStep needs train.fast_step other than 'off'")
        self.model, self.learner, self.optimizer = model, learner, optimizer
        self.cfg, self.device, self.mode, self.world = cfg, device, cfg.fast_step, world
        self.params = [p for m in (model, learner) for p in m.parameters()]
        self.implicit = train_tasks.implicit
        self.tasks = make_batch(model.user_table, train_tasks, None, device)  # all, on the device
        self.loss_sum = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.steps = 0  # since the last drain
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[Tensor | None] = []
        self._loss_fn, self._update_fn = self.loss, self.update
        if self.mode == "compile":
            # reduce-overhead: CUDA graphs under the compiled code on a GPU (none on a CPU).
            opts = dict(backend=compile_backend)
            if compile_backend == "inductor":
                opts["mode"] = "reduce-overhead" if device.type == "cuda" else "default"
            self._loss_fn = torch.compile(self.loss, **opts)
            self._update_fn = torch.compile(self.update, **opts)

    # ------------------------------------------------------------------ the step
    def loss(self, index: Tensor, keys: Tensor | None, draws: Tensor | None) -> Tensor:
        """The scalar meta-loss of the tasks ``index`` after the draws (all on the device)."""
        batch = take(self.tasks, index)
        if keys is not None:
            batch = resplit(batch, keys, implicit=self.implicit)
        if draws is not None:
            cfg = self.cfg
            batch = sample_support(batch, draws, full_prob=cfg.support_full_prob,
                                   max_shots=cfg.support_max_shots, dist=cfg.support_shots,
                                   implicit=self.implicit)
        # cache off: autocast's weight cache must not outlive a captured graph.
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False,
                            enabled=self.cfg.amp and self.device.type == "cuda"):
            return self.learner.meta_loss(self.model, batch)

    def update(self) -> None:
        """Clip the gradients and step the optimizer (no host sync: the clip is on device)."""
        if self.cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
        self.optimizer.step()

    def _eager(self, index: Tensor, keys: Tensor | None, draws: Tensor | None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss_fn(index, keys, draws)
        loss.backward()
        if self.world is not None:
            self.world.average_gradients(self.params)
        self._update_fn()
        self._record(loss)

    def _record(self, loss: Tensor) -> None:
        loss = loss.detach().float()
        self.loss_sum.add_(loss)
        self.nonfinite.logical_or_(~torch.isfinite(loss))

    # ------------------------------------------------------------------ host side
    def _inputs(self, index: np.ndarray, keys: Tensor | None, draws: Tensor | None
                ) -> list[Tensor | None]:
        pin = self.device.type == "cuda"
        out: list[Tensor | None] = []
        for host in (torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)), keys, draws):
            if host is not None:
                host = host.pin_memory() if pin else host
                host = host.to(self.device, non_blocking=True)
            out.append(host)
        return out

    def __call__(self, index: np.ndarray, keys: Tensor | None, draws: Tensor | None) -> None:
        inputs = self._inputs(index, keys, draws)
        self.calls += 1
        self.steps += 1
        if self.mode != "cuda_graph":
            self._eager(*inputs)
        elif self.graph is not None:
            for buf, new in zip(self.static, inputs):
                if buf is not None:
                    buf.copy_(new, non_blocking=True)
            self.graph.replay()
        elif self.calls <= WARMUP_STEPS:
            self._side_stream(lambda: self._eager(*inputs))
        else:
            self._capture(inputs)
            self.graph.replay()

    def _side_stream(self, fn) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _capture(self, inputs: list[Tensor | None]) -> None:
        """Capture one whole step reading the static input buffers (not run by the capture)."""
        self.static = [None if t is None else t.clone() for t in inputs]
        torch.cuda.synchronize(self.device)  # once, outside every step
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss = self.loss(*self.static)
            loss.backward()
            self.update()
            self._record(loss)

    def drain(self) -> tuple[float, int]:
        """(mean loss, steps) since the last drain: the one host synchronisation, every
        ``eval_every`` steps. A non-finite loss in the window is a FloatingPointError."""
        total, bad = float(self.loss_sum), bool(self.nonfinite)
        steps, self.steps = self.steps, 0
        if bad:
            raise FloatingPointError(f"a meta-loss in the last {steps} steps was not finite; "
                                     "lower train.lr or meta.inner_lr")
        self.loss_sum.zero_()
        return (total / steps if steps else float("nan")), steps

