"""The typed description of a learner's test-time adaptation (torch-free at import).

Every learner answers ``learner.adaptation() -> Adaptation``: which kind of adaptation it runs
on a task's support set, with which steps, rates and penalties. Export picks its emitter from
``kind``, the export metadata stores :meth:`Adaptation.to_dict`, serving logs that entry, and
reports may quote it. A configuration whose adaptation has no ONNX form says why in
``not_exportable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping

if TYPE_CHECKING:
    from torch import Tensor

Kind = Literal["gradient", "ridge", "none"]
KINDS: tuple[Kind, ...] = ("gradient", "ridge", "none")
Loss = Literal["mse", "bce", "bpr"]
LOSSES: tuple[Loss, ...] = ("mse", "bce", "bpr")


def canonical_loss(name: str) -> Loss:
    """The loss ``name`` (``meta.loss``) as the adaptation runs it: ``"auto"`` is ``"mse"``
    here (the pipeline resolves auto to bce for implicit data before building learners)."""
    if name == "auto":
        return "mse"
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of auto, {', '.join(LOSSES)}")
    return name  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields have no truth value
class Adaptation:
    """How a learner adapts to one task's support set at prediction time.

    Attributes:
        kind: ``"gradient"`` (``steps`` gradient steps on the support loss), ``"ridge"``
            (closed-form output layer: one Newton step on the penalised support loss) or ``"none"`` (the model as meta-trained).
        learner: the learner's registered name (a label for metadata and reports).
        steps: inner gradient steps (gradient kind; 0 otherwise).
        lr: scalar inner rate (gradient kind), used where ``per_param_lr`` is None.
        adapted: names of the parameters the inner loop updates (gradient kind).
        per_param_lr: rate per adapted parameter by name, each of that parameter's shape
            (Meta-SGD's learned rates, or fixed output-layer rates), or None: ``lr`` everywhere.
        ridge_lambda: (H + 1,) positive penalties of the ridge kind (the bias's last).
        ridge_size_power: (H + 1,) exponents of the support size n, or None: the ridge kind
            then penalises with ridge_lambda * ((n + 1) / 11) ** power
            (:func:`metarec.adaptation.ridge.size_penalties`).
        not_exportable: why this adaptation has no ONNX graph, or None when it has one.
        loss: the support loss the adaptation minimises (:mod:`metarec.adaptation.losses`):
            ``"mse"`` (ratings), ``"bce"`` or ``"bpr"`` (0/1 labels, scores are logits); the
            support mask is a non-negative weight per slot.
    Tensors are the learner's own, not copies: a meta-gradient flows through them (consumers
    that keep them, such as the ONNX export, detach).
    """

    kind: Kind
    learner: str
    steps: int = 0
    lr: float = 0.0
    adapted: frozenset[str] = field(default_factory=frozenset)
    per_param_lr: Mapping[str, Tensor] | None = None
    ridge_lambda: Tensor | None = None
    ridge_size_power: Tensor | None = None
    not_exportable: str | None = None
    loss: Loss = "mse"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"adaptation loss must be one of {LOSSES}, got {self.loss!r}")
        if self.kind not in KINDS:
            raise ValueError(f"adaptation kind must be one of {KINDS}, got {self.kind!r}")
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if (self.ridge_lambda is None) == (self.kind == "ridge"):
            raise ValueError("the ridge kind needs ridge_lambda, other kinds take none")
        if self.ridge_size_power is not None and (
                self.ridge_lambda is None
                or tuple(self.ridge_size_power.shape) != tuple(self.ridge_lambda.shape)):
            raise ValueError("ridge_size_power needs ridge_lambda and its shape, got "
                             f"{tuple(self.ridge_size_power.shape)}")
        if self.per_param_lr is not None and set(self.per_param_lr) != set(self.adapted):
            raise ValueError(f"per_param_lr names {sorted(self.per_param_lr)} differ from the "
                             f"adapted parameters {sorted(self.adapted)}")

    @property
    def exportable(self) -> bool:
        return self.not_exportable is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (rates and penalties as plain numbers; no tensors)."""
        rates = None if self.per_param_lr is None else {
            n: float(t.detach().float().mean()) for n, t in sorted(self.per_param_lr.items())}
        lam = None if self.ridge_lambda is None else self.ridge_lambda.detach().float().tolist()
        power = None if self.ridge_size_power is None else \
            self.ridge_size_power.detach().float().tolist()
        return {"kind": self.kind, "learner": self.learner, "steps": self.steps,
                "lr": self.lr, "adapted": sorted(self.adapted),
                "per_param_lr_mean": rates, "ridge_lambda": lam,
                "ridge_size_power": power,
                "not_exportable": self.not_exportable, "loss": self.loss}
