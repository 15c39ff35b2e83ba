"""Do a new user's features carry any order at 0 ratings? Item means within the user's group (diagnostic)

At 0 ratings the learner ranks by its prior, the item effect plus the network's term from the
user's features (gender, age, occupation, zip code on ML-100K). On the CV folds that term added
nothing (``diag_k0_ranking.py``). This script asks the question without any network, with
the most direct use of the features there is: rank a user's query items by their mean rating
among users of the same group (gender, age bucket, occupation, gender x age), shrunk toward the
item's overall mean by ``s`` pseudo-ratings, itself shrunk toward the global mean as the
``item_mean`` order is (5 pseudo-ratings). And, at the level the network could learn from its
inputs, ``gender x genre``: the item mean plus the user's gender group's mean residual (rating
minus item mean) on the item's genres, shrunk by ``s``. Statistics leave the scored user out
(but for the item means inside those residuals, where one user's rating is one of dozens), over
the default pipeline's training and validation users (``artifacts/tasks/{train,valid}.npz``; test
users are not read).

If no group order beats the plain item mean on nDCG@3, the features hold no order a learner
could find at 0 ratings, and the 0-rating cell is a level race by the data, not by the model.
Prints each order's nDCG@3, RecBole nDCG@5 and P@5, and its nDCG@3 minus the item mean's
(mean ± standard error over users). Not part of metarec.

    .venv/bin/python benchmarks/results/diag_demo_order.py \
        --out benchmarks/results/diag_demo_order_ml100k.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_gain_order import leave_user_out, load, summarise, write  # noqa: E402

ITEM_SHRINKAGE = 5.0       # item_mean's order (diag_gain_order's reference)
GROUP_SHRINKAGE = (2.0, 10.0, 50.0, 200.0)


def user_groups(tasks_dir: Path, features: Path) -> dict[str, np.ndarray]:
    """Each training/validation task's group code per user column and gender x age."""
    rows = np.concatenate([np.load(tasks_dir / f"{n}.npz")["user_row"] for n in ("train", "valid")])
    names = [c["column"] for c in json.loads((features.parent / "encoders.json").read_text())["user"]]
    cat = np.load(features)["user_cat"][rows]
    groups = {name: cat[:, j] for j, name in enumerate(names)}
    if "gender" in groups and "age" in groups:
        groups["gender x age"] = groups["gender"] * 100 + groups["age"]
    return groups


def group_means(d: dict[str, np.ndarray], group: np.ndarray, base: np.ndarray,
                shrinkage: float) -> np.ndarray:
    """(N, Q) leave-one-user-out item means among the user's own group at the query items,
    shrunk toward ``base`` (the item's overall leave-one-user-out mean) by ``shrinkage``."""
    n_items = int(d["items"].max()) + 1
    items, mask, r = d["items"], d["mask"], d["ratings"]
    out = np.zeros(d["q_items"].shape)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        total, count = np.zeros(n_items), np.zeros(n_items)
        np.add.at(total, items[members][mask[members]], r[members][mask[members]])
        np.add.at(count, items[members][mask[members]], 1.0)
        for u in members:
            own_t, own_c = np.zeros(n_items), np.zeros(n_items)
            np.add.at(own_t, items[u][mask[u]], r[u][mask[u]])
            np.add.at(own_c, items[u][mask[u]], 1.0)
            q = d["q_items"][u]
            out[u] = ((total[q] - own_t[q] + shrinkage * base[u])
                      / (count[q] - own_c[q] + shrinkage))
    return out


def genre_group_order(d: dict[str, np.ndarray], group: np.ndarray, genres: np.ndarray,
                      base: np.ndarray, shrinkage: float) -> np.ndarray:
    """(N, Q) ``base`` plus the mean over each query item's genres of the user's group's mean
    residual on that genre (rating minus the item's shrunk mean), leaving the user out."""
    items, mask, r = d["items"], d["mask"], d["ratings"]
    n_items, n_genres = genres.shape[0], int(genres.max()) + 1
    onehot = np.zeros((n_items, n_genres))
    for j in range(genres.shape[1]):
        onehot[np.arange(n_items), genres[:, j]] = 1.0
    onehot[:, 0] = 0.0  # padding
    count = np.bincount(items[mask], minlength=n_items)
    total = np.bincount(items[mask], r[mask], minlength=n_items)
    item_mean = (total + ITEM_SHRINKAGE * r[mask].mean()) / (count + ITEM_SHRINKAGE)
    resid = np.where(mask, r - item_mean[items], 0.0)
    own = [(onehot[items[u][mask[u]]].T @ resid[u][mask[u]], onehot[items[u][mask[u]]].sum(0))
           for u in range(len(items))]
    sums = {g: sum(own[u][0] for u in np.flatnonzero(group == g)) for g in np.unique(group)}
    counts = {g: sum(own[u][1] for u in np.flatnonzero(group == g)) for g in np.unique(group)}
    out = np.zeros_like(base)
    for u in range(len(items)):
        dev = (sums[group[u]] - own[u][0]) / (counts[group[u]] - own[u][1] + shrinkage)
        oh = onehot[d["q_items"][u]]
        out[u] = base[u] + (oh @ dev) / np.maximum(oh.sum(1), 1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="artifacts/tasks", help="the default pipeline's tasks")
    ap.add_argument("--features", default="artifacts/features/features.npz")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    d = load(Path(args.tasks))
    groups = user_groups(Path(args.tasks), Path(args.features))
    base = leave_user_out(d, d["ratings"], ITEM_SHRINKAGE)
    orders = {"item mean": base}
    for name, group in groups.items():
        for s in GROUP_SHRINKAGE:
            orders[f"{name} s={s:g}"] = group_means(d, group, base, s)
    if "gender" in groups:
        genres = np.load(args.features)["item_multi.genres"]
        for s in GROUP_SHRINKAGE:
            orders[f"gender x genre s={s:g}"] = genre_group_order(d, groups["gender"], genres,
                                                                  base, s)
    result = {"users": int(len(d["q_items"])), "groups": {k: int(len(np.unique(v)))
                                                          for k, v in groups.items()},
              "tasks": args.tasks, "orders": summarise(orders, d, "item mean")}
    write(result, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
