"""Implicit feedback and full-catalog ranking settings (``data.implicit``,
``evaluation.full_catalog``), apart from sections.py so that module stays short."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ImplicitRule:
    """How the rating column becomes implicit feedback (``data.feedback: implicit``).

    A value >= ``threshold`` is a positive (label 1); lower values are dropped and count as
    unobserved, like every item the user never touched (ML-100K: ratings >= 4, the convention
    of Liang et al., WWW 2018; play counts: threshold 1; 0/1 labels: threshold 1). Each
    positive carries a confidence weight (Hu, Koren & Volinsky, ICDM 2008): ``none`` (1),
    ``log`` (1 + alpha * ln(1 + value / epsilon)) or ``linear`` (1 + alpha * value).
    Each task's support and query hold ``negatives`` sampled items per positive (label 0,
    weight 1), drawn by ``sampler`` (``uniform`` over the catalog, or ``popularity``: in
    proportion to training positives ** ``popularity_power``), never a positive of the user.
    """

    threshold: float = 4.0
    confidence: Literal["none", "log", "linear"] = "none"
    alpha: float = 1.0
    epsilon: float = 1.0
    negatives: int = 4
    sampler: Literal["uniform", "popularity"] = "uniform"
    popularity_power: float = 1.0


@dataclass(frozen=True)
class FullCatalogConfig:
    """Full-catalog ranking metrics (metarec.evaluation.catalog): after adapting to a test
    user's support set, every catalog item the user did not interact with in support is
    ranked; the relevant items are the query's positives (implicit) or its ratings >=
    ``relevance_threshold`` (explicit). Names: full_recall_at_<k>, full_hr_at_<k>,
    full_ndcg_at_<k>, full_mrr."""

    enabled: bool = True
    metrics: tuple[str, ...] = ("recall", "hr", "ndcg", "mrr")
    ks: tuple[int, ...] = (10, 20)
    relevance_threshold: float = 4.0
    # (tasks x items) scores computed per chunk: memory vs speed.
    chunk: int = 262144


def resolve_loss(feedback: str, loss: str) -> str:
    """The loss ``meta.loss`` stands for under ``data.feedback``: ``auto`` is mse for ratings
    and bce for implicit labels; bce and bpr need implicit labels (a clear error otherwise)."""
    if loss == "auto":
        return "bce" if feedback == "implicit" else "mse"
    if loss in ("bce", "bpr") and feedback != "implicit":
        raise ValueError(f"meta.loss {loss!r} needs 0/1 labels: set data.feedback: implicit "
                         f"(or meta.loss: auto | mse for ratings)")
    return loss


def with_resolved_loss(meta, data):
    """``meta`` (a MetaConfig) with its loss resolved for ``data`` (a DataConfig)."""
    import dataclasses

    return dataclasses.replace(meta, loss=resolve_loss(data.feedback, meta.loss))


RATING_METRICS = ("mae", "rmse")


def check_feedback_settings(cfg) -> None:
    """Refuse settings that cannot work with ``cfg.data.feedback`` (a Config), naming the fix:
    an implicit model's scores are logits of an interaction, not ratings, so gating it on
    rating errors would compare nothing meaningful."""
    if cfg.data.feedback != "implicit":
        resolve_loss(cfg.data.feedback, cfg.meta.loss)
        return
    bad = [m for m in cfg.gate.metrics if m in RATING_METRICS]
    if bad:
        raise ValueError(f"gate.metrics {bad} compare ratings, which data.feedback: implicit "
                         f"has not: gate on ranking metrics, e.g. [full_recall_at_10, "
                         f"full_ndcg_at_10] (evaluation.full_catalog) or ndcg_at_3")


def implicit_evaluation(ev):
    """``ev`` (an EvaluationConfig) without the rating errors (mae, rmse) among its metrics,
    curve metrics and plots: meaningless for logits against 0/1 labels."""
    import dataclasses

    def keep(names):
        return tuple(n for n in names if n not in RATING_METRICS)
    return dataclasses.replace(ev, metrics=keep(ev.metrics), curve_metrics=keep(ev.curve_metrics),
                               plot_metrics=keep(ev.plot_metrics))
