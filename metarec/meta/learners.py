"""Meta-learners behind one small protocol, all built on one inner loop (metarec.adaptation).

- ``maml``: MAML (Finn et al., ICML 2017), second order, adapting ``meta.adapted`` parameters;
- ``fomaml``: first-order MAML (inner gradients detached);
- ``melu``: MeLU (Lee et al., KDD 2019): MAML adapting only the decision MLP; tower features are
  computed once per batch, outside the inner loop;
- ``metasgd``: Meta-SGD (Li et al., 2017): a learned learning rate per parameter entry;
- ``reptile``: Reptile (Nichol et al., 2018): adapt on the whole task, move toward the result;
- ``ridge``: R2-D2 (Bertinetto et al., ICLR 2019) on the MeLU estimator: the output layer adapts
  in closed form, a ridge regression of the support residuals on the last hidden features
  shrunk toward the meta-learned output layer, with meta-learned per-dimension penalties (the
  limit of infinitely many inner steps on a penalised MSE); everything else as MeLU mode;
- ``global`` (baseline, not a meta-learner): plain regression on every rating, no adaptation.

Every learner minimises the loss ``meta.loss`` (:mod:`metarec.adaptation.losses`: mse on
ratings, bce or bpr on implicit 0/1 labels, ``auto`` = mse here) in its inner loop (ridge: in
its Newton step) and in its outer loss, ListNet (``rank_loss_weight``) on top.

A learner is an ``nn.Module`` (Meta-SGD's rates are meta-parameters trained with the model) and
offers ``meta_loss(model, batch)`` (the scalar the training loop backpropagates),
``predict(model, batch)`` (adapt on support, score the query) and ``adaptation()`` (the typed
description of that adaptation, :class:`metarec.adaptation.spec.Adaptation`, which export and
reports read). Learners are registered by name with :func:`register_learner`; adding one is
one decorated builder ``(model, MetaConfig) -> learner``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from metarec.adaptation.gradient import adapt_batch, query_loss, query_scores
from metarec.adaptation.losses import loss_function
from metarec.adaptation.mlp import DECISION_PREFIX, bias_name, weight_name
from metarec.adaptation.ridge import ridge_head
from metarec.adaptation.spec import Adaptation, canonical_loss
from metarec.config import MetaConfig
from metarec.meta.inner import TaskBatch, listnet_loss
from metarec.models.estimator import Estimator


class Learner(Protocol):
    """What the training loop and evaluation need from a learner."""

    def meta_loss(self, model: Estimator, batch: TaskBatch) -> Tensor:
        """Scalar loss whose gradient is the meta-gradient of the batch."""
        ...

    def predict(self, model: Estimator, batch: TaskBatch) -> Tensor:
        """(N, Q) query scores after adapting on each task's support set."""
        ...

    def adaptation(self) -> Adaptation:
        """The adaptation ``predict`` runs, described (its tensors are the learner's own)."""
        ...

    def parameters(self) -> "object":  # nn.Module.parameters: the learner's own meta-parameters
        ...


def adapted_names(model: Estimator, which: str) -> frozenset[str]:
    """Names of the parameters adapted in the inner loop: ``"decision"`` or ``"all"``."""
    names = [n for n, _ in model.named_parameters()]
    if which == "all":
        return frozenset(names)
    if which == "decision":
        return frozenset(n for n in names if n.startswith(DECISION_PREFIX))
    raise ValueError(f"adapted must be 'decision' or 'all', got {which!r}")


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


def prior_loss(model: Estimator, batch: TaskBatch, loss: str = "mse") -> Tensor:
    """(N,) query loss of the unadapted model: the 0-shot prior every adaptation starts from
    (``meta.prior_loss_weight``)."""
    return loss_function(loss)(model(batch.user_cat, batch.query_items), batch.query_ratings,
                               batch.query_mask)


class GradientLearner(nn.Module):
    """MAML / FOMAML / MeLU / Meta-SGD: adapt on support, backpropagate the query loss."""

    def __init__(self, model: Estimator, *, adapted: str, steps: int, lr: float,
                 first_order: bool, learn_lr: bool, output_bias_lr: float | None = None,
                 support_loss_weight: float = 0.0, rank_loss_weight: float = 0.0,
                 output_weight_lr: float | None = None, name: str = "gradient",
                 prior_loss_weight: float = 0.0, loss: str = "mse") -> None:
        super().__init__()
        self.name = name
        self.loss = canonical_loss(loss)
        if rank_loss_weight < 0:
            raise ValueError(f"rank_loss_weight must be >= 0, got {rank_loss_weight}")
        self.rank_loss_weight = float(rank_loss_weight)
        if steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {steps}")
        if support_loss_weight < 0:
            raise ValueError(f"support_loss_weight must be >= 0, got {support_loss_weight}")
        self.support_loss_weight = float(support_loss_weight)
        if prior_loss_weight < 0:
            raise ValueError(f"prior_loss_weight must be >= 0, got {prior_loss_weight}")
        self.prior_loss_weight = float(prior_loss_weight)
        for key, rate in (("output_bias_lr", output_bias_lr), ("output_weight_lr", output_weight_lr)):
            if rate is not None and rate < 0:
                raise ValueError(f"{key} must be >= 0, got {rate}")
        self.adapted_set = adapted_names(model, adapted)
        self.steps, self.lr, self.first_order = steps, lr, first_order
        # MeLU mode: nothing outside the decision MLP adapts, so towers run once per batch.
        self.precompute = all(n.startswith(DECISION_PREFIX) for n in self.adapted_set)
        self._decision_names = frozenset(model.decision_params())
        params = dict(model.named_parameters())
        last = len(model.decision) - 1
        out_bias, out_weight = bias_name(last), weight_name(last)
        special = {n: r for n, r in ((out_bias, output_bias_lr), (out_weight, output_weight_lr))
                   if r is not None}

        def init(n: str) -> Tensor:
            return torch.full_like(params[n].detach(), special.get(n, lr))

        self.lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(init(n)) for n in sorted(self.adapted_set)}
        ) if learn_lr else None
        # Fixed per-parameter rates (not learned) when the output layer has its own rates; they
        # are exposed like Meta-SGD's so that the ONNX export applies the same steps.
        self.fixed_lrs = None
        if not learn_lr and set(special) & self.adapted_set:
            self.fixed_lrs = nn.Module()
            for n in sorted(self.adapted_set):
                self.fixed_lrs.register_buffer(_key(n), init(n), persistent=False)

    def _rates(self) -> dict[str, Tensor] | None:
        """Rate per adapted parameter (learned or fixed), attached; None: ``lr`` everywhere."""
        if self.lrs is not None:
            return {n: self.lrs[_key(n)] for n in self.adapted_set}
        if self.fixed_lrs is not None:
            return {n: getattr(self.fixed_lrs, _key(n)) for n in self.adapted_set}
        return None

    def adapt(self, model: Estimator, batch: TaskBatch, *, first_order: bool | None = None
              ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Per-task fast weights for ``batch`` and the query features (MeLU mode) or None."""
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        s_feats = q_feats = None
        if self.precompute:
            s_feats = model.embed(batch.user_cat, batch.support_items)  # (N, S, F)
            q_feats = model.embed(batch.user_cat, batch.query_items)  # (N, Q, F)
        fast = adapt_batch(model, params, buffers, batch, steps=self.steps, lr=self.lr,
                           adapted=self.adapted_set,
                           first_order=self.first_order if first_order is None else first_order,
                           per_param_lr=self._rates(), feats=s_feats, loss=self.loss)
        return fast, q_feats

    def adaptation(self) -> Adaptation:
        """Gradient steps; exportable when exactly the decision MLP adapts (MeLU mode)."""
        why = None
        if self.adapted_set != self._decision_names:
            why = (f"ONNX export supports adaptation of the decision MLP only (MeLU mode); "
                   f"learner {self.name!r} adapts {len(self.adapted_set)} parameters, "
                   f"{len(self.adapted_set - self._decision_names)} of them outside it "
                   f"(meta.adapted: all)")
        return Adaptation(kind="gradient", learner=self.name, steps=self.steps, lr=self.lr,
                          adapted=self.adapted_set, per_param_lr=self._rates(),
                          not_exportable=why, loss=self.loss)

    def meta_loss(self, model: Estimator, batch: TaskBatch) -> Tensor:
        fast, q_feats = self.adapt(model, batch)
        loss_fn = loss_function(self.loss)
        if self.rank_loss_weight > 0:
            scores = query_scores(model, fast, dict(model.named_buffers()), self.adapted_set,
                                  batch.user_cat, batch.query_items, q_feats)
            loss = (loss_fn(scores, batch.query_ratings, batch.query_mask).mean()
                    + self.rank_loss_weight * listnet_loss(scores, batch.query_ratings,
                                                           batch.query_mask).mean())
        else:
            loss = query_loss(model, fast, dict(model.named_buffers()), self.adapted_set, batch,
                              q_feats, self.loss)
        if self.support_loss_weight > 0:
            # Auxiliary: the meta-learned initial weights also fit the support ratings as they
            # are (the global model's objective), so every training rating gives a gradient.
            before = model(batch.user_cat, batch.support_items)
            loss = loss + self.support_loss_weight * loss_fn(
                before, batch.support_ratings, batch.support_mask).mean()
        if self.prior_loss_weight > 0:
            loss = loss + self.prior_loss_weight * prior_loss(model, batch, self.loss).mean()
        return loss

    def predict(self, model: Estimator, batch: TaskBatch) -> Tensor:
        fast, q_feats = self.adapt(model, batch, first_order=True)
        return query_scores(model, fast, dict(model.named_buffers()), self.adapted_set,
                            batch.user_cat, batch.query_items, q_feats).detach()


class ReptileLearner(GradientLearner):
    """Reptile: adapt (first order) on support and query together, then pull the
    meta-parameters toward the mean fast weights.

    The outer "gradient" of an adapted parameter is ``theta - mean_tasks(phi)`` (Reptile as a
    gradient, so the same AdamW loop applies); parameters that are not adapted (the towers in
    "decision" mode) learn from the query loss under the detached fast weights instead.
    """

    def __init__(self, model: Estimator, *, adapted: str, steps: int, lr: float,
                 loss: str = "mse") -> None:
        super().__init__(model, adapted=adapted, steps=steps, lr=lr, first_order=True,
                         learn_lr=False, name="reptile", loss=loss)

    def meta_loss(self, model: Estimator, batch: TaskBatch) -> Tensor:
        whole = TaskBatch(
            user_cat=batch.user_cat,
            support_items=torch.cat([batch.support_items, batch.query_items], 1),
            support_ratings=torch.cat([batch.support_ratings, batch.query_ratings], 1),
            support_mask=torch.cat([batch.support_mask, batch.query_mask], 1),
            query_items=batch.query_items, query_ratings=batch.query_ratings,
            query_mask=batch.query_mask)
        fast, _ = self.adapt(model, whole)
        params = dict(model.named_parameters())
        # 0.5 * ||theta - phi||^2 has gradient theta - phi (phi detached), averaged over tasks.
        pull = sum(0.5 * ((params[n] - fast[n].detach().mean(0)) ** 2).sum()
                   for n in self.adapted_set)
        if len(self.adapted_set) == len(params):
            return pull
        detached = {n: (p.detach() if n in self.adapted_set else p) for n, p in fast.items()}
        q_feats = model.embed(batch.user_cat, batch.query_items) if self.precompute else None
        towers = query_loss(model, detached, dict(model.named_buffers()), self.adapted_set,
                            batch, q_feats, self.loss)
        return pull + towers


class RidgeLearner(nn.Module):
    """Closed-form output-layer adaptation (:func:`metarec.adaptation.ridge.ridge_head`).

    Meta-parameters: the model's (towers, hidden layers, the output layer as the ridge prior)
    and ``log_lam``, the log of one penalty per output weight and one for the bias, trained by
    the same outer loop. The query loss is ``loss`` plus ``rank_loss_weight`` times ListNet.
    With item factors among the head's features (``model.head_factors``), their penalties start
    at ``factor_lam`` and their logs are ``factor_rate`` times their parameters: meta-learned
    that much faster, as their right size differs by orders of magnitude between datasets; the
    other penalties' logs are ``lam_rate`` times theirs.
    """

    def __init__(self, model: Estimator, *, lam: float, bias_lam: float,
                 rank_loss_weight: float = 0.0, factor_lam: float | None = None,
                 factor_rate: float = 1.0, prior_loss_weight: float = 0.0,
                 loss: str = "mse", lam_rate: float = 1.0, size_power: bool = False) -> None:
        super().__init__()
        self.loss = canonical_loss(loss)
        factor_lam = lam if factor_lam is None else factor_lam
        if lam <= 0 or bias_lam <= 0 or factor_lam <= 0:
            raise ValueError(f"ridge_lambda, ridge_bias_lambda and ridge_factor_lambda must be "
                             f"> 0, got {lam}, {bias_lam} and {factor_lam}")
        for name, value in (("ridge_factor_lambda_rate", factor_rate),
                            ("ridge_lambda_rate", lam_rate)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if rank_loss_weight < 0:
            raise ValueError(f"rank_loss_weight must be >= 0, got {rank_loss_weight}")
        width = model.head_width  # last hidden width (+ item factors with head_factors)
        init = torch.full((width + 1,), math.log(lam) / lam_rate)
        rate = torch.full((width + 1,), float(lam_rate))
        rate[model.decision[-1].in_features:-1] = factor_rate  # the item factors
        init[model.decision[-1].in_features:-1] = math.log(factor_lam) / factor_rate
        init[-1] = math.log(bias_lam) / lam_rate
        self.log_lam = nn.Parameter(init)
        self.register_buffer("lam_rate", rate, persistent=False)
        # meta.ridge_size_power: the exponents of the support size in the penalties, one for
        # the weights and one for the bias, from 0 (the plain penalties), meta-learned at the
        # penalties' rate (the parameter is the exponent / lam_rate).
        self.size_power = nn.Parameter(torch.zeros(2)) if size_power else None
        self.rank_loss_weight = float(rank_loss_weight)
        if prior_loss_weight < 0:
            raise ValueError(f"prior_loss_weight must be >= 0, got {prior_loss_weight}")
        self.prior_loss_weight = float(prior_loss_weight)

    def ridge_lambda(self) -> Tensor:
        """(head_width + 1,) penalties: one per head weight, the bias's last."""
        return (self.log_lam * self.lam_rate).exp()

    def ridge_size_power(self) -> Tensor | None:
        """(head_width + 1,) support-size exponents of the penalties (the weights' exponent,
        the bias's last), or None without ``meta.ridge_size_power``."""
        if self.size_power is None:
            return None
        rate = self.lam_rate[-1]
        weights, bias = self.size_power[0] * rate, self.size_power[1] * rate
        return torch.cat([weights.expand(self.log_lam.shape[0] - 1), bias[None]])

    def adaptation(self) -> Adaptation:
        return Adaptation(kind="ridge", learner="ridge", ridge_lambda=self.ridge_lambda(),
                          ridge_size_power=self.ridge_size_power(), loss=self.loss)

    def scores(self, model: Estimator, batch: TaskBatch) -> Tensor:
        return ridge_head(model, model.embed(batch.user_cat, batch.support_items),
                          batch.support_items, batch.support_ratings, batch.support_mask,
                          model.embed(batch.user_cat, batch.query_items), batch.query_items,
                          self.ridge_lambda(), self.loss, self.ridge_size_power())

    def meta_loss(self, model: Estimator, batch: TaskBatch) -> Tensor:
        scores = self.scores(model, batch)
        loss = loss_function(self.loss)(scores, batch.query_ratings, batch.query_mask).mean()
        if self.rank_loss_weight > 0:
            loss = loss + self.rank_loss_weight * listnet_loss(
                scores, batch.query_ratings, batch.query_mask).mean()
        if self.prior_loss_weight > 0:
            loss = loss + self.prior_loss_weight * prior_loss(model, batch, self.loss).mean()
        return loss

    def predict(self, model: Estimator, batch: TaskBatch) -> Tensor:
        return self.scores(model, batch).detach()


class GlobalLearner(nn.Module):
    """Baseline: the same network trained on every rating of the training tasks (support and
    query alike, one list per task for bpr) by ``loss``, with no adaptation; its ``predict``
    scores the query as is."""

    def __init__(self, loss: str = "mse") -> None:
        super().__init__()
        self.loss = canonical_loss(loss)

    def meta_loss(self, model: Estimator, batch: TaskBatch) -> Tensor:
        items = torch.cat([batch.support_items, batch.query_items], 1)
        ratings = torch.cat([batch.support_ratings, batch.query_ratings], 1)
        mask = torch.cat([batch.support_mask, batch.query_mask], 1)
        return loss_function(self.loss)(model(batch.user_cat, items), ratings, mask).mean()

    def predict(self, model: Estimator, batch: TaskBatch) -> Tensor:
        return model(batch.user_cat, batch.query_items).detach()

    def adaptation(self) -> Adaptation:
        return Adaptation(kind="none", learner="global", loss=self.loss)


# --------------------------------------------------------------------------- registry

Builder = Callable[[Estimator, MetaConfig], nn.Module]


@dataclass(frozen=True)
class LearnerEntry:
    """A registered learner: its builder, and whether it is a baseline (no meta-learning,
    so not a value of ``meta.learner``)."""

    build: Builder
    baseline: bool = False


REGISTRY: dict[str, LearnerEntry] = {}


def register_learner(name: str, *, baseline: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(model, cfg) -> learner`` under ``name``."""
    def add(builder: Builder) -> Builder:
        if name in REGISTRY:
            raise ValueError(f"learner {name!r} is registered twice")
        REGISTRY[name] = LearnerEntry(builder, baseline)
        return builder
    return add


def _gradient(model: Estimator, cfg: MetaConfig, name: str, *, adapted: str | None = None,
              first_order: bool | None = None, learn_lr: bool = False) -> GradientLearner:
    """A :class:`GradientLearner` from ``cfg``; ``adapted``/``first_order`` override it."""
    return GradientLearner(model, adapted=cfg.adapted if adapted is None else adapted,
                           first_order=cfg.first_order if first_order is None else first_order,
                           learn_lr=learn_lr, steps=cfg.inner_steps, lr=cfg.inner_lr,
                           output_bias_lr=cfg.output_bias_lr,
                           support_loss_weight=cfg.support_loss_weight,
                           prior_loss_weight=cfg.prior_loss_weight,
                           rank_loss_weight=cfg.rank_loss_weight,
                           output_weight_lr=cfg.output_weight_lr, name=name, loss=cfg.loss)


@register_learner("maml")
def _maml(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return _gradient(model, cfg, "maml")


@register_learner("fomaml")
def _fomaml(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return _gradient(model, cfg, "fomaml", first_order=True)


@register_learner("melu")
def _melu(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return _gradient(model, cfg, "melu", adapted="decision")


@register_learner("metasgd")
def _metasgd(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return _gradient(model, cfg, "metasgd", learn_lr=True)


@register_learner("reptile")
def _reptile(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return ReptileLearner(model, adapted=cfg.adapted, steps=cfg.inner_steps, lr=cfg.inner_lr,
                          loss=cfg.loss)


@register_learner("ridge")
def _ridge(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return RidgeLearner(model, lam=cfg.ridge_lambda, bias_lam=cfg.ridge_bias_lambda,
                        rank_loss_weight=cfg.rank_loss_weight,
                        factor_lam=cfg.ridge_factor_lambda,
                        factor_rate=cfg.ridge_factor_lambda_rate,
                        prior_loss_weight=cfg.prior_loss_weight, loss=cfg.loss,
                        lam_rate=cfg.ridge_lambda_rate, size_power=cfg.ridge_size_power)


@register_learner("global", baseline=True)
def _global(model: Estimator, cfg: MetaConfig) -> nn.Module:
    return GlobalLearner(cfg.loss)


LEARNERS = tuple(REGISTRY)
META_LEARNERS = tuple(n for n, e in REGISTRY.items() if not e.baseline)


def build_learner(model: Estimator, cfg: MetaConfig, name: str | None = None) -> nn.Module:
    """The learner ``name`` (default ``cfg.learner``) configured from ``cfg``."""
    name = cfg.learner if name is None else name
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name].build(model, cfg)
