"""Train as the model is served: each training rating meets its item without itself.

The item statistics (count, shrunk mean: the tower's input and the score offset), the item-id
flags and the collaborative item factors are fitted on every training rating
(:func:`metarec.training.loop.fit_item_stats`). A training task's query item therefore carries
that very rating in its mean and factors, a signal no new user brings: on ML-100K's training
users the item-mean predictor's MAE is 0.819 with it and 0.834 without (the validation users':
0.825), and meta-training learns to trust the items' fitted values by that much too much.

:func:`hold_out_ratings` gives the model one virtual item row per training rating
(:meth:`metarec.models.estimator.Estimator.set_virtual_rows`) holding its item's fitted values
leave-one-out (:func:`metarec.models.fitting.leave_one_out`) and returns the training tasks with
their items pointed at those rows; everything else of the item (features, text, embeddings) is
the catalog row's. Validation, evaluation, the export and serving see only catalog rows, whose
fitted values are unchanged. ``train.hold_out``: ``stats`` (the item statistics and id flags),
``all`` (the factors too) or ``none`` (the fitted values as they are).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from metarec.data.arrays import TaskArrays
from metarec.models.estimator import Estimator
from metarec.models.fitting import leave_one_out


def training_ratings(tasks: TaskArrays, with_query: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every real rating of ``tasks``, support then query (the order the fit reads them):
    item rows, ratings, task index (the training user), and the support and query masks."""
    sm, qm = tasks.support_mask.astype(bool), tasks.query_mask.astype(bool)
    if not with_query:
        qm = np.zeros_like(qm)
    items = np.concatenate([tasks.support_items[sm], tasks.query_items[qm]])
    ratings = np.concatenate([tasks.support_ratings[sm], tasks.query_ratings[qm]])
    users = np.concatenate([np.nonzero(sm)[0], np.nonzero(qm)[0]])
    return items, ratings, users, sm, qm


def hold_out_ratings(model: Estimator, tasks: TaskArrays, factors: bool = True) -> TaskArrays:
    """Give ``model`` a virtual row per rating of ``tasks`` (its item, fitted without it) and
    return ``tasks`` with every real slot pointing at its row (padding slots keep theirs).
    ``factors`` False: the item statistics and id flags only (the rows keep the item's
    factors). A model without fitted item values is left alone and ``tasks`` returned as is."""
    if not model.fits_training_ratings:
        return tasks
    if model.item_stats_from != "all":
        raise ValueError("train.hold_out needs model.item_stats_from: all (with 'support' the "
                         "query ratings are not fitted; set train.hold_out: none)")
    items, ratings, users, sm, qm = training_ratings(tasks)
    n_items = model.item_table.shape[0]
    fac = model.item_fac if factors else None
    loo = leave_one_out(torch.as_tensor(items, dtype=torch.long),
                        torch.as_tensor(ratings, dtype=torch.float64),
                        torch.as_tensor(users, dtype=torch.long), n_items,
                        model.item_stats_shrinkage, model.item_debias,
                        0 if fac is None else fac.shape[1], model.item_factors_reg,
                        model.item_factors_als)
    stats = (None if model.item_stats is None else
             torch.stack([loo["log_count"], loo["effect"]], 1))
    model.set_virtual_rows(torch.as_tensor(items, dtype=torch.long), stats=stats,
                           fac=None if fac is None else loo.get("fac"),
                           known=None if model.item_known is None else loo["known"])
    virtual = n_items + np.arange(len(items), dtype=np.int64)
    support = tasks.support_items.copy()
    query = tasks.query_items.copy()
    n_support = int(sm.sum())
    support[sm] = virtual[:n_support]
    query[qm] = virtual[n_support:]
    return dataclasses.replace(tasks, support_items=support, query_items=query)
