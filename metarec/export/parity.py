"""Parity of an export: ONNX Runtime (CPU) against the PyTorch adaptation on random tasks.

The reference is :func:`metarec.adaptation.kinds.adapted_scores`, the same PyTorch functions
the learners' ``predict`` runs, picked by the adaptation's kind (not by learner name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.adaptation.kinds import adapted_scores
from metarec.adaptation.spec import Adaptation
from metarec.export.artifacts import ExportResult
from metarec.export.runtime import MODEL_FILE, SCORER_FILE, session
from metarec.models.estimator import Estimator

log = logging.getLogger(__name__)

SUPPORT_SIZES = (0, 1, 2, 5, 10, 37)


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime against PyTorch adaptation + scores on random tasks (rating units)."""

    max_abs_err: float  # adapted graph (model.onnx) against the PyTorch adaptation
    scorer_max_abs_err: float  # scorer.onnx against the unadapted model
    tol: float
    n_tasks: int
    support_sizes: tuple[int, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_err": self.max_abs_err, "scorer_max_abs_err": self.scorer_max_abs_err,
                "tol": self.tol, "n_tasks": self.n_tasks,
                "support_sizes": list(self.support_sizes), "passed": self.passed}


def _random_task(model: Estimator, t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Task ``t`` of the check as a graph feed: support size ``SUPPORT_SIZES[t % 6]`` (capped
    at the item count), 3 masked padding slots in one task of three, a known user's row in
    even tasks and random attributes otherwise, 1..64 candidates."""
    n_items, n_users = int(model.item_table.shape[0]), int(model.user_table.shape[0])
    s = min(SUPPORT_SIZES[t % len(SUPPORT_SIZES)], n_items)
    pad = 3 if t % 3 == 2 else 0
    if n_users and t % 2 == 0:
        user = model.user_table[int(rng.integers(n_users))].cpu().numpy()
    else:  # a new user: random encoded attributes
        user = np.array([rng.integers(emb.num_embeddings) for emb in model.user_emb],
                        dtype=np.int64)
    items = np.concatenate([rng.choice(n_items, s, replace=False), np.zeros(pad, np.int64)])
    ratings = np.concatenate([rng.integers(1, 6, s), np.zeros(pad)]).astype(np.float32)
    mask = np.concatenate([np.ones(s), np.zeros(pad)]).astype(np.float32)
    perm = rng.permutation(s + pad)  # padding anywhere, not only at the end
    cands = rng.choice(n_items, int(rng.integers(1, min(n_items, 64) + 1)), replace=False)
    return {"user_cat": user.astype(np.int64), "support_items": items[perm].astype(np.int64),
            "support_ratings": ratings[perm], "support_mask": mask[perm],
            "candidate_items": cands.astype(np.int64)}


def parity_check(model: Estimator, export: ExportResult | str | Path, adaptation: Adaptation,
                 *, n_tasks: int = 16, tol: float = 1e-4, seed: int = 0) -> ParityReport:
    """Compare ONNX Runtime (CPU) with PyTorch on ``n_tasks`` random tasks.

    Support sizes cycle through 0, 1, 2, 5, 10, 37 (capped at the item count); one task in
    three pads its support with masked slots. Ratings are drawn from 1..5, candidates from all
    item rows. ``passed`` is ``max_abs_err <= tol`` for both graphs.
    """
    out_dir = Path(export.out_dir if isinstance(export, ExportResult) else export)
    adapt_sess, score_sess = session(out_dir / MODEL_FILE), session(out_dir / SCORER_FILE)
    rng = np.random.default_rng(seed)
    model = model.eval()
    dev = model.item_table.device
    worst = worst_scorer = 0.0
    sizes = []
    for t in range(n_tasks):
        feed = _random_task(model, t, rng)
        tt = {k: torch.as_tensor(v, device=dev) for k, v in feed.items()}
        got = adapt_sess.run(["scores"], feed)[0]
        want = adapted_scores(model, adaptation, tt["user_cat"], tt["support_items"],
                              tt["support_ratings"], tt["support_mask"], tt["candidate_items"])
        worst = max(worst, float(np.max(np.abs(got - want.cpu().numpy()))))
        got0 = score_sess.run(["scores"], {"user_cat": feed["user_cat"],
                                           "candidate_items": feed["candidate_items"]})[0]
        with torch.no_grad():
            want0 = model(tt["user_cat"], tt["candidate_items"]).cpu().numpy()
        worst_scorer = max(worst_scorer, float(np.max(np.abs(got0 - want0))))
        sizes.append(int(np.sum(feed["support_mask"])))
    passed = bool(worst <= tol and worst_scorer <= tol and np.isfinite(worst + worst_scorer))
    report = ParityReport(worst, worst_scorer, tol, n_tasks, tuple(sizes), passed)
    log.info("ONNX parity: max |err| %.3g (adapted), %.3g (scorer), tol %.1g -> %s",
             worst, worst_scorer, tol, "passed" if passed else "FAILED")
    return report
