"""A synthetic dataset with known low-rank structure, and the oracle that knows it.

Generative model (every draw from one seed):

    m(u, i) = global + b_u + b_i + <p_u, q_i>          p_u, q_i ~ N(0, factor_sd^2 I_8)
    rating  = clip(round(m(u, i) + eps), 1, 5)         eps ~ N(0, noise_sd^2)

with b_u ~ N(0, 0.15^2), b_i ~ N(0, 0.3^2): almost all of a rating's predictable part is the
user-item interaction <p_u, q_i>, which only collaborative structure (items' factors learned
from other users' ratings, and the user's support set) recovers. With the defaults an oracle
reaches MAE ~0.45 while item_mean, user_mean and the global median sit at ~1.10.

Side information carries (almost) no signal: item titles and texts are random words, with a
random ``genre`` tag and release ``year`` (1985..2000), drawn independently of the factors;
users have a random ``age`` and a ``segment`` (the quadrant of their first two factors, replaced
by a random quadrant for half of the users: weakly informative).

The oracle (:func:`oracle_predict`) returns the conditional median of the rating given the true
factors, clip(ceil(m - 1/2), 1, 5) = clip(round(m), 1, 5): rounding of a symmetric noise makes
P(rating <= k) = Phi((k + 1/2 - m) / noise_sd), which passes 1/2 at the first k >= m - 1/2.
The median minimises the expected absolute error, so its MAE is the lowest any predictor can
expect. :func:`oracle_score` (m itself) is the oracle's ranking score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .layout import Variant, csv_params, write_csv_dataset

WORDS = ("amber", "bridge", "cinder", "delta", "ember", "fable", "granite", "harbor", "island",
         "juniper", "kestrel", "lantern", "meadow", "nimbus", "orchid", "pebble", "quartz",
         "raven", "saffron", "tundra", "umber", "velvet", "willow", "xenon", "yonder", "zephyr")
GENRES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
TRUTH_FILE = "truth.npz"


def _texts(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    words = rng.choice(len(WORDS), size=(n, 5))
    titles = [f"{WORDS[a].title()} {WORDS[b]} {i}" for i, (a, b, *_) in enumerate(words, 1)]
    about = [" ".join(WORDS[w] for w in row[2:]) for row in words]
    return titles, about


def _counts(rng: np.random.Generator, n_users: int, per_user: int, lo: int, hi: int,
            n_items: int) -> np.ndarray:
    """Ratings per user: log-normal around ``per_user`` (sd 0.45 in log), clipped to lo..hi."""
    n = np.round(per_user * np.exp(rng.normal(-0.1, 0.45, n_users)))
    return np.clip(n, lo, min(hi, n_items)).astype(np.int64)


def write_lowrank(dest: Path, seed: int = 0, n_users: int = 1500, n_items: int = 1200,
                  per_user: int = 60, rank: int = 8, factor_sd: float = 0.72,
                  noise_sd: float = 0.7, global_mean: float = 3.3,
                  min_ratings: int = 13, max_ratings: int = 100) -> Variant:
    """Write the lowrank dataset (CSV layout + ``truth.npz``) into ``dest``; see the module doc.

    Items are chosen per user with a mild popularity skew (weight ~ (rank + 10)^-0.5).
    """
    rng = np.random.default_rng([seed, 4])
    p = rng.normal(0.0, factor_sd, (n_users, rank))
    q = rng.normal(0.0, factor_sd, (n_items, rank))
    b_u, b_i = rng.normal(0.0, 0.15, n_users), rng.normal(0.0, 0.3, n_items)
    weight = (rng.permutation(n_items) + 10.0) ** -0.5
    weight /= weight.sum()
    counts = _counts(rng, n_users, per_user, min_ratings, max_ratings, n_items)
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, size=c, replace=False, p=weight) for c in counts])
    m = global_mean + b_u[users] + b_i[items] + np.einsum("nd,nd->n", p[users], q[items])
    rating = np.clip(np.round(m + rng.normal(0.0, noise_sd, len(m))), 1, 5).astype(np.int64)
    inter = pd.DataFrame({"user_id": users + 1, "item_id": items + 1, "rating": rating,
                          "timestamp": 1_600_000_000 + 60 * np.arange(len(m))})
    quadrant = (p[:, 0] > 0).astype(int) * 2 + (p[:, 1] > 0).astype(int)
    noisy = rng.random(n_users) < 0.5
    quadrant[noisy] = rng.integers(0, 4, int(noisy.sum()))
    user_frame = pd.DataFrame({"user_id": np.arange(1, n_users + 1),
                               "age": rng.integers(18, 70, n_users),
                               "segment": [f"s{k}" for k in quadrant]})
    titles, about = _texts(rng, n_items)
    item_frame = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": titles,
                               "genre": [GENRES[g] for g in rng.integers(0, len(GENRES), n_items)],
                               "about": about})
    # A release year without signal, so that the melu protocol (existing items: year <= 1996)
    # can split the items too.
    item_frame["year"] = rng.integers(1985, 2001, n_items)
    write_csv_dataset(dest, inter, user_frame, item_frame)
    np.savez(dest / TRUTH_FILE, user_ids=np.arange(1, n_users + 1),
             item_ids=np.arange(1, n_items + 1),
             global_mean=global_mean, user_bias=b_u, item_bias=b_i, user_factors=p,
             item_factors=q, noise_sd=noise_sd)
    params = csv_params(rating_min=1, rating_max=5, min_ratings=min_ratings,
                        max_ratings=max_ratings, user_categorical=("segment",),
                        user_numeric=("age",), item_categorical=("genre",),
                        item_numeric=("year",))
    stats = {"users": n_users, "items": int(np.unique(items).size), "ratings": len(m),
             "ratings_per_user": [int(counts.min()), int(counts.max())], "rank": rank,
             "factor_sd": factor_sd, "noise_sd": noise_sd, "seed": seed}
    return Variant("lowrank", dest, params, dest / TRUTH_FILE, stats)


def load_truth(path: Path) -> dict[str, np.ndarray]:
    """The generating parameters written beside the CSV files (no pickles)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def oracle_score(truth: dict[str, np.ndarray], user_ids: np.ndarray,
                 item_ids: np.ndarray) -> np.ndarray:
    """m(u, i), the noise-free latent rating, for canonical id arrays of any (same) shape."""
    u = np.searchsorted(truth["user_ids"], user_ids)
    i = np.searchsorted(truth["item_ids"], item_ids)
    return (truth["global_mean"] + truth["user_bias"][u] + truth["item_bias"][i]
            + np.einsum("...d,...d->...", truth["user_factors"][u], truth["item_factors"][i]))


def oracle_predict(truth: dict[str, np.ndarray], user_ids: np.ndarray,
                   item_ids: np.ndarray) -> np.ndarray:
    """The MAE-optimal prediction: the conditional median clip(ceil(m - 1/2), 1, 5)."""
    return np.clip(np.ceil(oracle_score(truth, user_ids, item_ids) - 0.5), 1, 5)
