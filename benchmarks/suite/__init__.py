"""A suite of dataset variants that stress what held-out datasets showed the default model lacks.

Each variant is written in the generic CSV layout (interactions.csv, users.csv, items.csv) into
a folder, with the params.yaml overrides that make metarec read it (``data.dataset: csv``, the
``validation`` rating range, the ``tasks`` window); see :func:`generate`. Every rule is seeded and
deterministic. Datasets never go into git: write them under an ignored or temporary folder.

- ``ml100k-quintile``: ML-100K, each rating replaced by its within-user quintile 1..5 (mid-ranks,
  ties share a quintile). No user bias is left to learn, as with play counts turned into
  per-user quintile ratings: stresses models whose edge is the user's offset.
- ``ml100k-halfstar``: ML-100K on the half-star grid 0.5..5.0, r - 0.5 * Bernoulli(0.5) per
  rating (seeded); rating_min 0.5. Stresses the rating range and a finer, noisier scale.
- ``ml100k-5to500``: users with 5..500 ratings: a seeded 30% of users keep a random 5..12 of
  their ratings, the few above 500 keep 500; window ``tasks.min_ratings: 5``, ``max_ratings:
  500`` (``query_size: 4``, since a task needs more ratings than its query). Stresses both ends
  of the window (one support rating; 400+ support ratings) in one model.
- ``lowrank``: synthetic users x items (default 1,500 x 1,200, ~60 ratings per user, 13..100)
  from known 8-dimensional user and item factors plus noise, side information carrying no
  signal (random titles, texts, genre and year; a weakly informative user segment). An oracle
  knowing the factors reaches MAE ~0.45, the mean baselines ~1.10: stresses learning
  collaborative structure from ratings alone. :mod:`.lowrank` has the oracle.

The ML-100K variants read the canonical tables that ``metarec data prepare`` wrote for the
default dataset (``prepared``: e.g. ``artifacts/prepared``).

    from benchmarks.suite import generate
    variant = generate("lowrank", Path("/tmp/lowrank/data/csv"), seed=0, n_users=300)
    variant.params   # merge into params.yaml; raw_dir = /tmp/lowrank/data
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .layout import Variant, csv_params, merge, write_csv_dataset
from .lowrank import load_truth, oracle_predict, oracle_score, write_lowrank
from .movielens import (
    ml100k_5to500,
    ml100k_halfstar,
    ml100k_quintile,
    within_user_quintiles,
)

ML100K_VARIANTS: dict[str, Callable[..., Variant]] = {
    "ml100k-quintile": ml100k_quintile,
    "ml100k-halfstar": ml100k_halfstar,
    "ml100k-5to500": ml100k_5to500,
}
VARIANTS = (*ML100K_VARIANTS, "lowrank")

__all__ = ["VARIANTS", "Variant", "csv_params", "generate", "load_truth", "merge",
           "oracle_predict", "oracle_score", "within_user_quintiles", "write_csv_dataset",
           "write_lowrank"]


def generate(name: str, dest: Path, *, prepared: Path | None = None, seed: int = 0,
             **options: Any) -> Variant:
    """Write variant ``name`` into ``dest`` (the dataset folder, ``<raw_dir>/csv``).

    ``prepared``: canonical ML-100K tables (the ML-100K variants need them); ``options`` go
    to the generator (e.g. ``n_users`` for lowrank, ``share`` for ml100k-5to500).
    """
    dest = Path(dest)
    if name == "lowrank":
        return write_lowrank(dest, seed=seed, **options)
    if name not in ML100K_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    if prepared is None or not (Path(prepared) / "interactions.parquet").exists():
        raise FileNotFoundError(f"{name} needs the prepared ML-100K tables (got {prepared}); "
                                "run `metarec data fetch && metarec data prepare`")
    return ML100K_VARIANTS[name](dest, Path(prepared), seed=seed, **options)
