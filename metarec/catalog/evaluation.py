"""Evaluation through the catalog path: task sets scored by the user graph over a catalog.

The same few-shot tasks the evaluation report scores in PyTorch (:mod:`metarec.evaluation`),
here adapted by ``user.onnx`` on the support items' catalog rows and scored by ``score.onnx``
on the query items' rows; items are matched by id, so a catalog whose items were added after
the export (`metarec items add`) scores them as the model does. Metrics come from the same
functions as the report's (:func:`metarec.evaluation.metrics.task_scores`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metarec.catalog.artifact import Catalog
from metarec.catalog.scoring import CatalogGraphs
from metarec.data.arrays import FeatureArrays, TaskArrays


def catalog_predictions(graphs: CatalogGraphs, catalog: Catalog, features: FeatureArrays,
                        tasks: TaskArrays) -> np.ndarray:
    """(N, Q) query scores of ``tasks`` (item rows of ``features``) through the catalog;
    an item missing from the catalog is an error naming it."""
    ids = np.asarray(features.item_ids, np.int64)
    missing = sorted({int(ids[r]) for r in np.unique(np.concatenate(
        [tasks.support_items[tasks.support_mask.astype(bool)],
         tasks.query_items[tasks.query_mask.astype(bool)]])) if int(ids[r]) not in catalog.row_of})
    if missing:
        raise ValueError(f"item(s) {missing[:20]} of the tasks are not in catalog version "
                         f"{catalog.version}; add them first")
    to_row = np.vectorize(lambda r: catalog.row_of.get(int(ids[r]), 0), otypes=[np.int64])
    out = np.zeros(tasks.query_items.shape, np.float32)
    for n in range(len(tasks)):
        sm = tasks.support_mask[n].astype(bool)
        state = graphs.adapt(catalog, features.user_cat[tasks.user_row[n]],
                             to_row(tasks.support_items[n][sm]), tasks.support_ratings[n][sm])
        out[n] = graphs.score(catalog, state, to_row(tasks.query_items[n]))
    return out


def catalog_metrics(graphs: CatalogGraphs, catalog: Catalog, features: FeatureArrays,
                    tasks: TaskArrays, names: Sequence[str]) -> dict[str, float]:
    """The report's metrics ``names`` (e.g. ``mae``, ``ndcg_at_3``) of ``tasks`` scored
    through the catalog."""
    from metarec.evaluation.metrics import task_scores

    pred = catalog_predictions(graphs, catalog, features, tasks)
    return task_scores(pred, tasks.query_ratings, tasks.query_mask, list(names)).aggregate(
        list(names))
