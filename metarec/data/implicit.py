"""Implicit feedback: labels from the rating column, sampled negatives, implicit tasks.

``data.feedback: implicit`` (rule: ``data.implicit``, :class:`metarec.config.ImplicitRule`):

1. :func:`to_implicit`: every interaction whose value (a rating, a play count, a 0/1 label) is
   >= ``threshold`` becomes a positive; the others are dropped and count as unobserved, like
   every item the user never touched. The rating column then holds the positive's confidence
   weight (:func:`confidence`): 1, or Hu, Koren & Volinsky's (ICDM 2008) ``1 + alpha ln(1 +
   value / epsilon)`` or ``1 + alpha value``. MovieLens as implicit data: ratings >= 4 are
   positives (Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018).
   The split and the ``min_ratings``/``max_ratings`` rules then count positives.
2. :func:`build_implicit_tasks`: a task holds its user's positives (label 1, weight = the
   confidence) as query (the first ``query_size`` of a seeded shuffle) and support (up to
   ``support_width`` more), plus ``negatives`` sampled items per positive in each (label 0,
   weight 1). Negatives come from the set's pool of items (those of every set sharing items
   with it: the whole catalog for user-split, existing or new items for melu), drawn
   without replacement by :func:`sample_negatives` with a seeded generator, ``uniform`` or in
   proportion to (training positives + 1) ** ``popularity_power``, and are never one of the
   user's positives anywhere in the data (every set and scenario). Layout: each array holds the
   positives first, then the negatives, then padding (mask False).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from metarec.config import ImplicitRule
from metarec.data.arrays import FeatureArrays, TaskArrays, rows_of as _rows_of, user_groups
from metarec.data.tables import CanonicalTables

log = logging.getLogger(__name__)


def check_rule(rule: ImplicitRule) -> None:
    """A clear error for a rule that cannot work."""
    if rule.negatives < 0:
        raise ValueError(f"data.implicit.negatives must be >= 0, got {rule.negatives}")
    if rule.confidence not in ("none", "log", "linear"):
        raise ValueError(f"data.implicit.confidence must be none, log or linear, got "
                         f"{rule.confidence!r}")
    if rule.sampler not in ("uniform", "popularity"):
        raise ValueError(f"data.implicit.sampler must be uniform or popularity, got "
                         f"{rule.sampler!r}")
    if rule.alpha < 0 or rule.epsilon <= 0:
        raise ValueError(f"data.implicit.alpha must be >= 0 and epsilon > 0, got {rule.alpha} "
                         f"and {rule.epsilon}")


def confidence(values: np.ndarray, rule: ImplicitRule) -> np.ndarray:
    """(R,) float32 confidence weights of positives with ``values`` (all >= 1 for none/log with
    values >= 0)."""
    values = np.asarray(values, np.float64)
    if rule.confidence == "none":
        out = np.ones_like(values)
    elif rule.confidence == "log":
        out = 1.0 + rule.alpha * np.log1p(np.maximum(values, 0.0) / rule.epsilon)
    else:
        out = 1.0 + rule.alpha * np.maximum(values, 0.0)
    return out.astype(np.float32)


def to_implicit(tables: CanonicalTables, rule: ImplicitRule) -> CanonicalTables:
    """``tables`` with only the positives (value >= threshold), their rating column replaced
    by their confidence weight. Logs how many interactions the threshold dropped."""
    check_rule(rule)
    inter = tables.interactions
    values = inter["rating"].to_numpy(np.float64)
    keep = values >= rule.threshold
    if not keep.any():
        raise ValueError(f"data.implicit.threshold={rule.threshold} leaves no positive "
                         f"interaction (values range {values.min():g}..{values.max():g})")
    out = inter.loc[keep].copy()
    out["rating"] = confidence(values[keep], rule)
    log.info("implicit feedback: %d of %d interactions are positives (value >= %g); the "
             "other %d are dropped as unobserved", int(keep.sum()), len(inter), rule.threshold,
             int((~keep).sum()))
    return dataclasses.replace(tables, interactions=out.reset_index(drop=True))


def feedback_tables(tables: CanonicalTables, feedback: str, rule: ImplicitRule
                    ) -> CanonicalTables:
    """The tables the split sees: as they are (explicit) or :func:`to_implicit`."""
    if feedback == "explicit":
        return tables
    if feedback == "implicit":
        return to_implicit(tables, rule)
    raise ValueError(f"data.feedback must be 'explicit' or 'implicit', got {feedback!r}")


def sampling_weights(pool: np.ndarray, positive_rows: np.ndarray, rule: ImplicitRule
                     ) -> np.ndarray | None:
    """Probabilities of the ``pool`` item rows under ``rule.sampler`` (None: uniform).

    ``positive_rows``: the item row of every training positive (popularity counts)."""
    if rule.sampler == "uniform":
        return None
    counts = np.bincount(positive_rows, minlength=int(pool.max()) + 1 if len(pool) else 0)
    w = (counts[pool].astype(np.float64) + 1.0) ** rule.popularity_power
    return w / w.sum()


def sample_negatives(rng: np.random.Generator, pool: np.ndarray, probs: np.ndarray | None,
                     exclude: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct item rows of ``pool`` (probabilities ``probs``, None: uniform), none in
    ``exclude``; fewer (all eligible ones, with a warning) when the pool holds fewer."""
    if n == 0:
        return np.zeros(0, np.int64)
    banned = set(np.asarray(exclude).tolist())
    eligible = len(pool) - int(np.isin(pool, np.asarray(exclude)).sum())
    if eligible == 0:
        raise ValueError(f"cannot sample negatives: every one of the {len(pool)} items of the "
                         f"pool is a positive of the user")
    n = min(n, eligible)  # a short pool: every eligible item (the caller reports it)
    out: list[int] = []
    while len(out) < n:
        for item in rng.choice(pool, size=2 * (n - len(out)) + 8, p=probs).tolist():
            if item not in banned:
                banned.add(item)
                out.append(item)
                if len(out) == n:
                    break
    return np.asarray(out, np.int64)


def build_implicit_tasks(interactions: pd.DataFrame, features: FeatureArrays, *,
                         query_size: int, support_width: int, negatives: int, seed: int,
                         positives_of: dict[int, np.ndarray], pool: np.ndarray,
                         probs: np.ndarray | None) -> TaskArrays:
    """Implicit tasks of every user in ``interactions`` (user_id, item_id, rating = weight).

    ``positives_of``: every positive item row of each user in the whole data (never sampled);
    ``pool``/``probs``: the items negatives are drawn from and their probabilities. Widths:
    support ``support_width * (1 + negatives)``, query ``query_size * (1 + negatives)``.
    """
    users, starts, sizes, item_rows, weights = user_groups(
        interactions, features, query_size=query_size, support_width=support_width,
        what="positives")
    n, r = len(users), negatives
    sw, qw = support_width * (1 + r), query_size * (1 + r)
    out = {"support_items": np.zeros((n, sw), np.int64),
           "support_ratings": np.zeros((n, sw), np.float32),
           "support_mask": np.zeros((n, sw), bool),
           "support_weights": np.zeros((n, sw), np.float32),
           "query_items": np.zeros((n, qw), np.int64),
           "query_ratings": np.zeros((n, qw), np.float32),
           "query_mask": np.zeros((n, qw), bool),
           "query_weights": np.zeros((n, qw), np.float32)}
    rng = np.random.default_rng(seed)
    neg_rng = np.random.default_rng([seed, 1])
    truncated = short = short_users = 0
    for t, (start, size) in enumerate(zip(starts, sizes)):
        order = start + rng.permutation(size)
        query, support = order[:query_size], order[query_size:query_size + support_width]
        truncated += size - query_size - len(support)
        want = r * (query_size + len(support))
        negs = sample_negatives(neg_rng, pool, probs, positives_of[int(users[t])], want)
        short += want - len(negs)
        short_users += len(negs) < want
        q_neg, s_neg = negs[:r * query_size], negs[r * query_size:]
        for prefix, pos, neg in (("query", query, q_neg), ("support", support, s_neg)):
            k, m = len(pos), len(neg)
            out[f"{prefix}_items"][t, :k] = item_rows[pos]
            out[f"{prefix}_items"][t, k:k + m] = neg
            out[f"{prefix}_ratings"][t, :k] = 1.0
            out[f"{prefix}_mask"][t, :k + m] = True
            out[f"{prefix}_weights"][t, :k] = weights[pos]
            out[f"{prefix}_weights"][t, k:k + m] = 1.0
    if truncated:
        log.warning("support_width=%d dropped %d support positives", support_width, truncated)
    if short:
        log.warning("%d user(s) have fewer items outside their positives than %d negatives per "
                    "positive need (a pool of %d items): %d negatives fewer in all; lower "
                    "data.implicit.negatives", short_users, r, len(pool), short)
    return TaskArrays(user_ids=users, user_row=_rows_of(users, features.user_ids, "user"), **out)


def negative_pools(sets: dict[str, pd.DataFrame], training: tuple[str, ...],
                   interactions: pd.DataFrame, features: FeatureArrays, rule: ImplicitRule
                   ) -> tuple[dict[int, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """Every user's positive item rows in the whole data (``interactions``, after
    :func:`to_implicit`: never sampled as negatives, whichever set or scenario holds them), and
    per set the pool of item rows its negatives come from with their probabilities
    (popularity: positives of the ``training`` sets)."""
    known = interactions[interactions["item_id"].isin(features.item_ids)]
    rows = _rows_of(known["item_id"].to_numpy(np.int64), features.item_ids, "item")
    users = known["user_id"].to_numpy(np.int64)
    order = np.argsort(users, kind="stable")
    uniq, starts = np.unique(users[order], return_index=True)
    positives_of = {int(u): np.unique(part) for u, part in
                    zip(uniq, np.split(rows[order], starts[1:]))}
    train = pd.concat([sets[n] for n in training], ignore_index=True)
    train_rows = _rows_of(train["item_id"].to_numpy(np.int64), features.item_ids, "item")
    items = {name: np.unique(_rows_of(df["item_id"].to_numpy(np.int64), features.item_ids,
                                      "item")) for name, df in sets.items()}
    pools = {}
    for name in sets:
        # The sets sharing items with this one (user-split: all; melu: existing or new items).
        pool = np.unique(np.concatenate([items[o] for o in sets
                                         if np.intersect1d(items[o], items[name]).size]))
        pools[name] = (pool, sampling_weights(pool, train_rows, rule))
    return positives_of, pools
