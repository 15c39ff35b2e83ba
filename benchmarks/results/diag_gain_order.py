"""Which item-only order ranks a user's query set best, and how far is the ceiling? (diagnostic)

The order at 0 ratings can only come from the items. nDCG@3 here (MeLU's) gains 2^r - 1, so the
order that maximises its expectation under an item-only model ranks by the expected gain
E[2^r - 1 | item], not by the mean rating: a polarising item with many 5s is worth more than
its mean says. This script checks whether that holds on the data. From the tasks of the
default pipeline's training and validation users (``artifacts/tasks/{train,valid}.npz``, built
by ``metarec tasks`` or ``metarec pipeline run``; test users are not read) it computes item
statistics from every rating of those users but the scored user's own (leave one user out), and
scores the orders on each user's query set:

- ``mean``: the shrunk mean rating (the ``item_mean`` baseline's order; ``s`` pseudo-ratings
  at the global mean), ``gain``: the shrunk mean of 2^r - 1, ``top``: the shrunk share of 5s,
  ``liked``: of ratings >= 4, for s in 2, 5, 20;
- ``oracle``: the true ratings (ties spread, as the metrics do), and the true ratings plus
  Gaussian noise of sd 0.5 / 0.75 / 1.0: where the RecBole aim (P@5 >= 0.65) sits between a
  random order (P@5 = 0.5) and a perfect one.

Prints the ranking figures (nDCG@3, RecBole nDCG@5, P@5) of each order and the paired
difference of nDCG@3 to ``mean s=5`` (mean ± standard error over users). Not part of metarec.

    .venv/bin/python benchmarks/results/diag_gain_order.py \
        --out benchmarks/results/diag_gain_order_ml100k.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from metarec.evaluation.metrics import ndcg_at_k, precision_at_k, recbole_ndcg_at_k

SHRINKAGE = (2.0, 5.0, 20.0)
NOISE = (0.5, 0.75, 1.0)


def load(tasks_dir: Path) -> dict[str, np.ndarray]:
    """Query arrays and every rating (support + query) of the training and validation users."""
    parts = [np.load(tasks_dir / f"{name}.npz") for name in ("train", "valid")]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in
           ("query_items", "query_ratings", "query_mask", "support_items", "support_ratings",
            "support_mask")}
    items = np.concatenate([cat["support_items"], cat["query_items"]], axis=1)
    ratings = np.concatenate([cat["support_ratings"], cat["query_ratings"]], axis=1)
    mask = np.concatenate([cat["support_mask"], cat["query_mask"]], axis=1)
    return {"items": items, "ratings": ratings.astype(np.float64), "mask": mask,
            "q_items": cat["query_items"], "q_ratings": cat["query_ratings"].astype(np.float64),
            "q_mask": cat["query_mask"]}


def leave_user_out(d: dict[str, np.ndarray], values: np.ndarray, shrinkage: float) -> np.ndarray:
    """(N, Q) shrunk item means of ``values`` (same shape as d["ratings"]) at each user's query
    items, from every user's ratings but that user's own."""
    n_items = int(d["items"].max()) + 1
    items, mask = d["items"], d["mask"]
    total, count = np.zeros(n_items), np.zeros(n_items)
    np.add.at(total, items[mask], values[mask])
    np.add.at(count, items[mask], 1.0)
    prior = values[mask].mean()
    out = np.zeros(d["q_items"].shape)
    for u in range(len(items)):
        own_t, own_c = np.zeros(n_items), np.zeros(n_items)
        np.add.at(own_t, items[u][mask[u]], values[u][mask[u]])
        np.add.at(own_c, items[u][mask[u]], 1.0)
        q = d["q_items"][u]
        out[u] = (total[q] - own_t[q] + shrinkage * prior) / (count[q] - own_c[q] + shrinkage)
    return out


def scores(pred: np.ndarray, d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r, m = d["q_ratings"], d["q_mask"]
    return {"ndcg_at_3": ndcg_at_k(pred, r, m, 3),
            "recbole_ndcg_at_5": recbole_ndcg_at_k(pred, r, m, 5),
            "precision_at_5": precision_at_k(pred, r, m, 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="artifacts/tasks", help="the default pipeline's tasks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    d = load(Path(args.tasks))
    r = d["ratings"]
    orders: dict[str, np.ndarray] = {}
    for s in SHRINKAGE:
        orders[f"mean s={s:g}"] = leave_user_out(d, r, s)
        orders[f"gain s={s:g}"] = leave_user_out(d, 2.0 ** r - 1.0, s)
        orders[f"top s={s:g}"] = leave_user_out(d, (r >= 5).astype(float), s)
        orders[f"liked s={s:g}"] = leave_user_out(d, (r >= 4).astype(float), s)
    rng = np.random.default_rng(args.seed)
    orders["random"] = np.zeros_like(d["q_ratings"])
    orders["oracle"] = d["q_ratings"]
    for sd in NOISE:
        noise = rng.normal(0, sd, d["q_ratings"].shape)
        orders[f"oracle + noise sd {sd:g}"] = d["q_ratings"] + noise
    result = {"users": int(len(d["q_items"])), "tasks": args.tasks,
              "orders": summarise(orders, d, "mean s=5")}
    write(result, Path(args.out))
    return 0


def summarise(orders: dict[str, np.ndarray], d: dict[str, np.ndarray], reference: str
              ) -> dict[str, dict[str, float | str]]:
    """Each order's mean metrics and its nDCG@3 minus ``reference``'s (mean ± standard error
    over users)."""
    per = {name: scores(pred, d) for name, pred in orders.items()}
    ref = per[reference]["ndcg_at_3"]
    out: dict[str, dict[str, float | str]] = {}
    for name, sc in per.items():
        row: dict[str, float | str] = {k: round(float(np.nanmean(v)), 4) for k, v in sc.items()}
        diff = sc["ndcg_at_3"] - ref
        ok = np.isfinite(diff)
        row[f"ndcg_at_3 - {reference}"] = (f"{diff[ok].mean():+.4f} ± "
                                           f"{diff[ok].std(ddof=1) / np.sqrt(ok.sum()):.4f}")
        out[name] = row
    return out


def write(result: dict, out: Path) -> None:
    """Print ``result`` as JSON and write it to ``out``."""
    text = json.dumps(result, indent=1)
    print(text)
    out.write_text(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
