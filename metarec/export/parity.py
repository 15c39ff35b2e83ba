"""Parity of an export: ONNX Runtime (CPU) against the PyTorch adaptation on random tasks.

The reference is :func:`metarec.adaptation.kinds.adapted_scores`, the same PyTorch functions
the learners' ``predict`` runs, picked by the adaptation's kind (not by learner name).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.adaptation.kinds import adapted_scores
from metarec.adaptation.spec import Adaptation
from metarec.catalog.artifact import read_catalog
from metarec.catalog.scoring import CatalogGraphs
from metarec.export.artifacts import ExportResult
from metarec.export.item_graph import catalog_rows, encoder_inputs, encoder_outputs
from metarec.export.runtime import CATALOG_DIR, METADATA_FILE, MODEL_FILE, SCORER_FILE, session
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
    # the catalog path: user.onnx + score.onnx over catalog/ against the PyTorch adaptation,
    # and item_encoder.onnx against the item tower of an item without training ratings
    catalog_max_abs_err: float = 0.0
    encoder_max_abs_err: float = 0.0
    # what ``tol`` bounds: the largest |error| / max(1, |PyTorch score|) over every path, so
    # that scores beyond +-1 (logits, a long support's adapted rating) get float32's relative
    # precision: a 30-rating pairwise Newton step differs by ~1e-4 at |score| 4 between CPUs
    max_scaled_err: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_err": self.max_abs_err, "scorer_max_abs_err": self.scorer_max_abs_err,
                "catalog_max_abs_err": self.catalog_max_abs_err,
                "encoder_max_abs_err": self.encoder_max_abs_err,
                "max_scaled_err": self.max_scaled_err, "tol": self.tol, "n_tasks": self.n_tasks,
                "support_sizes": list(self.support_sizes), "passed": self.passed}


def _support_values(rng: np.random.Generator, s: int,
                    implicit: bool) -> tuple[np.ndarray, np.ndarray]:
    """(s,) ratings and mask of a check task's real slots: ratings 1..5 and mask 1, or for an
    implicit loss 0/1 labels (a positive and a negative first when s >= 2) and mask weights,
    1..3 on positives, 1 on negatives (as implicit tasks fold their confidences in)."""
    if not implicit:
        return rng.integers(1, 6, s).astype(np.float32), np.ones(s, np.float32)
    labels = rng.integers(0, 2, s).astype(np.float32)
    labels[:2] = [1.0, 0.0][:s]
    weights = np.where(labels > 0, 1.0 + 2.0 * rng.random(s), 1.0)
    return labels, weights.astype(np.float32)


def _random_task(model: Estimator, t: int, rng: np.random.Generator,
                 pool: np.ndarray, implicit: bool = False) -> dict[str, np.ndarray]:
    """Task ``t`` of the check as a graph feed: support size ``SUPPORT_SIZES[t % 6]`` (capped
    at the item count), 3 masked padding slots in one task of three, a known user's row in
    even tasks and random attributes otherwise, 1..64 candidates; items drawn from the model
    rows ``pool``; support values by :func:`_support_values`."""
    n_items, n_users = len(pool), int(model.user_table.shape[0])
    s = min(SUPPORT_SIZES[t % len(SUPPORT_SIZES)], n_items)
    pad = 3 if t % 3 == 2 else 0
    if n_users and t % 2 == 0:
        user = model.user_table[int(rng.integers(n_users))].cpu().numpy()
    else:  # a new user: random encoded attributes
        user = np.array([rng.integers(emb.num_embeddings) for emb in model.user_emb],
                        dtype=np.int64)
    items = np.concatenate([pool[rng.choice(n_items, s, replace=False)],
                            np.full(pad, pool[0], np.int64)])
    values, weights = _support_values(rng, s, implicit)
    ratings = np.concatenate([values, np.zeros(pad)]).astype(np.float32)
    mask = np.concatenate([weights, np.zeros(pad)]).astype(np.float32)
    perm = rng.permutation(s + pad)  # padding anywhere, not only at the end
    cands = pool[rng.choice(n_items, int(rng.integers(1, min(n_items, 64) + 1)), replace=False)]
    return {"user_cat": user.astype(np.int64), "support_items": items[perm].astype(np.int64),
            "support_ratings": ratings[perm], "support_mask": mask[perm],
            "candidate_items": cands.astype(np.int64)}


def _errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """max |got - want| and max |got - want| / max(1, |want|); inf when anything is not finite
    (a NaN must not vanish in a running max)."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    if not np.all(np.isfinite(diff)):
        return math.inf, math.inf
    return float(diff.max(initial=0.0)), float((diff / np.maximum(1.0, np.abs(want))).max(initial=0.0))


def parity_check(model: Estimator, export: ExportResult | str | Path, adaptation: Adaptation,
                 *, n_tasks: int = 16, tol: float = 1e-4, seed: int = 0) -> ParityReport:
    """Compare ONNX Runtime (CPU) with PyTorch on ``n_tasks`` random tasks.

    Support sizes cycle through 0, 1, 2, 5, 10, 37 (capped at the item count); one task in
    three pads its support with masked slots. Ratings are drawn from 1..5 (implicit losses:
    0/1 labels with weights in the mask), items from the export's catalog. The same tasks go through ``model.onnx``, ``scorer.onnx`` (unadapted)
    and the catalog path (``user.onnx`` + ``score.onnx`` over ``catalog/``); the item encoder
    is compared on every item as a new one. ``passed``: every error ``<= tol`` times
    max(1, |score|) (absolute within +-1, relative beyond: ``max_scaled_err``).
    """
    out_dir = Path(export.out_dir if isinstance(export, ExportResult) else export)
    adapt_sess, score_sess = session(out_dir / MODEL_FILE), session(out_dir / SCORER_FILE)
    meta = json.loads((out_dir / METADATA_FILE).read_text(encoding="utf-8"))
    catalog = read_catalog(out_dir / CATALOG_DIR)
    graphs = CatalogGraphs(out_dir, meta["catalog"])
    # model row of each catalog row; tasks are drawn among the catalog's items
    model_row = {int(i): r for r, i in enumerate(meta["item_ids"])}
    rows_in_catalog = np.array([model_row[int(i)] for i in catalog.ids], np.int64)
    catalog_row = {int(r): c for c, r in enumerate(rows_in_catalog)}
    rng = np.random.default_rng(seed)
    model = model.eval()
    dev = model.item_table.device
    worst = worst_scorer = worst_catalog = scaled = 0.0
    sizes = []
    for t in range(n_tasks):
        feed = _random_task(model, t, rng, rows_in_catalog, adaptation.loss != "mse")
        tt = {k: torch.as_tensor(v, device=dev) for k, v in feed.items()}
        got = adapt_sess.run(["scores"], feed)[0]
        want = adapted_scores(model, adaptation, tt["user_cat"], tt["support_items"],
                              tt["support_ratings"], tt["support_mask"], tt["candidate_items"])
        want = want.cpu().numpy()
        err, rel = _errors(got, want)
        worst, scaled = max(worst, err), max(scaled, rel)
        to_catalog = np.vectorize(catalog_row.__getitem__, otypes=[np.int64])
        state = graphs.adapt(catalog, feed["user_cat"], to_catalog(feed["support_items"]),
                             feed["support_ratings"], feed["support_mask"])
        got_c = graphs.score(catalog, state, to_catalog(feed["candidate_items"]))
        err, rel = _errors(got_c, want)
        worst_catalog, scaled = max(worst_catalog, err), max(scaled, rel)
        got0 = score_sess.run(["scores"], {"user_cat": feed["user_cat"],
                                           "candidate_items": feed["candidate_items"]})[0]
        with torch.no_grad():
            want0 = model(tt["user_cat"], tt["candidate_items"]).cpu().numpy()
        err, rel = _errors(got0, want0)
        worst_scorer, scaled = max(worst_scorer, err), max(scaled, rel)
        sizes.append(int(np.sum(feed["support_mask"] > 0)))
    worst_encoder = encoder_error(model, out_dir / meta["catalog"]["item_encoder"])
    errors = (worst, worst_scorer, worst_catalog, worst_encoder)
    scaled = max(scaled, worst_encoder)  # the item tower's outputs are unit-scale features
    passed = bool(scaled <= tol and np.isfinite(sum(errors)))
    report = ParityReport(worst, worst_scorer, tol, n_tasks, tuple(sizes), passed,
                          worst_catalog, worst_encoder, scaled)
    log.info("ONNX parity: max |err| %.3g (adapted), %.3g (scorer), %.3g (catalog path), "
             "%.3g (item encoder), tol %.1g -> %s", *errors, tol,
             "passed" if passed else "FAILED")
    return report


def new_item_rows(model: Estimator, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The PyTorch reference of the item encoder: the catalog rows of the model's items
    ``rows`` as if they had no training ratings (statistics, id flag and factors zeroed)."""
    fresh = copy.deepcopy(model)
    for name in ("item_stats", "item_known", "item_fac"):
        buf = getattr(fresh, name)
        if buf is not None:
            buf.zero_()
    return catalog_rows(fresh, rows)


def encoder_inputs_of(model: Estimator, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The item encoder's feed for the model's own item rows (their encoded attributes)."""
    idx = torch.as_tensor(rows)
    feed = {"item_cat": model.item_table[idx].cpu().numpy().astype(np.int64)}
    feed.update({f"item_bag_{n}": getattr(model, f"item_bag_{n}")[idx].cpu().numpy()
                 for n in model.multi_names})
    if model.item_text is not None:
        feed["item_text"] = model.item_text[idx].float().cpu().numpy()
    return {k: v for k, v in feed.items() if k in encoder_inputs(model)}


def encoder_error(model: Estimator, encoder_path: Path) -> float:
    """Largest |item_encoder.onnx - PyTorch| over every item row as a new item's."""
    rows = np.arange(model.item_table.shape[0])
    sess = session(encoder_path)
    names = encoder_outputs(model)
    got = dict(zip(names, sess.run(names, encoder_inputs_of(model, rows))))
    want = new_item_rows(model, rows)
    key = {"item_vecs": "vectors", "item_first": "first", "item_offset": "offset",
           "item_head": "head"}
    return max(float(np.max(np.abs(got[n] - want[key[n]]), initial=0.0)) for n in names)
