"""benchmarks/suite: each variant is deterministic for its seed, is read and accepted by metarec's
CSV source and data contracts, and keeps its defining property; the lowrank oracle is good.

The ML-100K variants run on the RecBole-layout ML-100K fixture, grown in the same layout by a
seeded block of users (the fixture alone has 3 users and 5 ratings: too few for a task window).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.suite import (
    generate,
    load_truth,
    merge,
    oracle_predict,
    oracle_score,
    within_user_quintiles,
)
from metarec.config import config_from_dict
from metarec.data.sources import read_ml100k, read_source
from metarec.data.tables import write_tables
from metarec.data.validation import validate_tables
from tests.conftest import FIXTURES, REPO

LOWRANK = {"n_users": 160, "n_items": 120, "per_user": 30}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Canonical tables of the ML-100K fixture + 60 seeded users with 20..150 ratings."""
    raw = tmp_path_factory.mktemp("ml100k")
    shutil.copytree(FIXTURES / "ml100k_recbole", raw, dirs_exist_ok=True)
    rng = np.random.default_rng(7)
    n_items = 200
    items = [f"{i}\tFilm {i}\t{rng.integers(1950, 1998)}\tDrama Comedy\n"
             for i in range(14, 14 + n_items)]
    users = [f"{u}\t{rng.integers(18, 60)}\t{'MF'[u % 2]}\twriter\t{10000 + u}\n"
             for u in range(4, 64)]
    ratings = [f"{u}\t{14 + i}\t{rng.integers(1, 6)}\t{880000000 + u * 1000 + i}\n"
               for u in range(4, 64)
               for i in rng.choice(n_items, size=int(rng.integers(20, 151)), replace=False)]
    for name, lines in (("item", items), ("user", users), ("inter", ratings)):
        with open(raw / f"ml-100k.{name}", "a", encoding="utf-8") as f:
            f.writelines(lines)
    dest = tmp_path_factory.mktemp("prepared")
    write_tables(read_ml100k(raw), dest)
    return dest


def _read_and_validate(variant) -> pd.DataFrame:
    """The variant through `data.dataset: csv` and the GX data contracts; its interactions."""
    raw = merge(yaml.safe_load((REPO / "params.yaml").read_text()), variant.params)
    cfg = config_from_dict(raw)
    tables = read_source(dataclasses.replace(cfg.data, raw_dir=str(variant.folder.parent)))
    report = validate_tables(tables, dataclasses.replace(cfg.validation, data_docs=False),
                             cfg.tasks)
    assert report.passed, [f.__dict__ for f in report.failures]
    assert len(tables.items) and tables.items.text.str.len().min() > 0
    return tables.interactions


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name,options", [("ml100k-quintile", {}), ("ml100k-halfstar", {}),
                                          ("ml100k-5to500", {"high": 100}),
                                          ("lowrank", LOWRANK)])
def test_variant_is_deterministic_and_accepted(name, options, prepared, tmp_path):
    first = generate(name, tmp_path / "a" / "csv", prepared=prepared, seed=1, **options)
    again = generate(name, tmp_path / "b" / "csv", prepared=prepared, seed=1, **options)
    assert _digest(first.folder) == _digest(again.folder)
    assert first.params == again.params and first.params["data"]["dataset"] == "csv"
    if name != "ml100k-quintile":  # the quintile rule has nothing random
        other = generate(name, tmp_path / "c" / "csv", prepared=prepared, seed=2, **options)
        assert _digest(other.folder) != _digest(first.folder)
    _read_and_validate(first)


def test_quintiles_hand_computed():
    frame = pd.DataFrame({"user_id": [1] * 10 + [2] * 5,
                          "rating": [*np.arange(10, 0, -1), 1, 1, 1, 1, 5]})
    # user 1: distinct ratings, two per quintile; user 2: the four tied 1s share mid-rank 2.5,
    # ceil(5 * 2 / 5) = 2, and the 5 (rank 5) is ceil(5 * 4.5 / 5) = 5.
    assert within_user_quintiles(frame).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 2, 2, 2, 2, 5]


def test_quintile_variant_is_per_user_quintiles(prepared, tmp_path):
    inter = _read_and_validate(generate("ml100k-quintile", tmp_path / "csv", prepared=prepared))
    source = pd.read_parquet(prepared / "interactions.parquet")
    both = source.merge(inter, on=["user_id", "item_id"], suffixes=("_src", ""))
    assert len(both) == len(source) and set(inter.rating) == {1, 2, 3, 4, 5}
    for _, g in both.groupby("user_id"):
        if len(g) < 10:
            continue
        order = g.sort_values("rating_src")
        assert order.rating.is_monotonic_increasing  # the user's order is kept
        assert abs(g.rating.mean() - 3.0) < 0.5  # no user bias left
    assert both.groupby("user_id").rating.mean().std() < 0.2


def test_halfstar_variant_is_on_the_half_grid(prepared, tmp_path):
    variant = generate("ml100k-halfstar", tmp_path / "csv", prepared=prepared)
    assert variant.params["validation"]["rating_min"] == 0.5
    inter = _read_and_validate(variant)
    source = pd.read_parquet(prepared / "interactions.parquet")
    both = source.merge(inter, on=["user_id", "item_id"], suffixes=("_src", ""))
    assert inter.rating.between(0.5, 5.0).all() and (inter.rating * 2 % 1 == 0).all()
    drop = both.rating_src - both.rating
    assert set(drop.round(3)) == {0.0, 0.5} and 0.4 < (drop > 0).mean() < 0.6


def test_5to500_variant_spans_the_window(prepared, tmp_path):
    variant = generate("ml100k-5to500", tmp_path / "csv", prepared=prepared, high=100)
    assert variant.params["tasks"]["min_ratings"] == 5
    assert variant.params["tasks"]["query_size"] < 5  # a 5-rating user still has a task
    counts = _read_and_validate(variant).groupby("user_id").size()
    assert counts.min() >= 5 and counts.max() == 100
    assert 0.15 < (counts <= 12).mean() < 0.45  # the seeded 30% short users
    source = pd.read_parquet(prepared / "interactions.parquet")
    assert (source.groupby("user_id").size() > 100).any()  # the cap did something


def test_lowrank_oracle_beats_item_mean_on_held_out_ratings(tmp_path):
    variant = generate("lowrank", tmp_path / "csv", seed=0, n_users=400, n_items=300)
    inter = pd.read_csv(variant.folder / "interactions.csv")
    held = np.random.default_rng(0).random(len(inter)) < 0.2
    train, test = inter[~held], inter[held]
    glob = train.rating.mean()
    stats = train.groupby("item_id").rating.agg(["sum", "count"])
    shrunk = (stats["sum"] + 5 * glob) / (stats["count"] + 5)  # item_mean's shrinkage
    item_mean = test.item_id.map(shrunk).fillna(glob).to_numpy()
    truth = load_truth(variant.truth)
    oracle = oracle_predict(truth, test.user_id.to_numpy(), test.item_id.to_numpy())
    mae_item = np.abs(item_mean - test.rating).mean()
    mae_oracle = np.abs(oracle - test.rating).mean()
    assert mae_oracle < 0.55 and mae_item > 1.0 and mae_item - mae_oracle > 0.45
    # The conditional median is the MAE-optimal point prediction: the latent mean is worse.
    latent = np.clip(oracle_score(truth, test.user_id.to_numpy(), test.item_id.to_numpy()), 1, 5)
    assert np.abs(latent - test.rating).mean() > mae_oracle


def test_curves_aggregate_reads_by_metric_name_and_closes_the_gap():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import curves

    def run(seed, learner_mae):
        curve = {"ridge": {"0": {"mae": 1.1, "ndcg_at_3": 0.5, "new_metric": 1.0},
                           "all": {"mae": learner_mae, "ndcg_at_3": 0.6}},
                 "item_mean": {"0": {"mae": 1.1, "ndcg_at_3": 0.5},
                               "all": {"mae": 1.1, "ndcg_at_3": 0.5}}}
        return {"seed": seed, "curves": {"test": curve}, "tasks": {"test": 3},
                "oracle": {"test": {"mae": 0.5, "ndcg_at_3": 0.9}}}

    agg = curves.aggregate([run(0, 0.8), run(1, 1.0)])["test"]
    assert agg["ridge"]["all"]["mae"]["mean"] == pytest.approx(0.9)
    assert agg["ridge"]["all"]["mae"]["min"] == pytest.approx(0.8)
    # (1.1 - 0.8) / (1.1 - 0.5) = 0.5 and (1.1 - 1.0) / 0.6 = 1/6
    assert agg["ridge"]["all"]["gap_closed"]["mean"] == pytest.approx((0.5 + 1 / 6) / 2, abs=1e-4)
    assert agg["oracle"]["all"]["mae"]["mean"] == pytest.approx(0.5)
    assert "new_metric" not in agg["ridge"]["0"]


def test_curves_pool_paired_differences_over_seeds_against_the_best_baseline():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import curves

    z = curves.Z

    def run(seed, diff_item, diff_global):
        # per seed: a bootstrap interval of half-width z * se, se = 0.01
        cell = lambda d: {"diff": d, "interval": [d - z * 0.01, d + z * 0.01]}  # noqa: E731
        curve = {m: {"1": {"mae": v, "ndcg_at_3": 0.7}} for m, v in
                 (("ridge", 0.80), ("item_mean", 0.85), ("global", 0.83))}
        return {"seed": seed, "curves": {"test": curve}, "tasks": {"test": 3},
                "differences": {"test": {
                    "item_mean": {"1": {"mae": cell(diff_item), "ndcg_at_3": cell(0.0)}},
                    "global": {"1": {"mae": cell(diff_global), "ndcg_at_3": cell(0.01)}}}}}

    runs = [run(0, -0.06, -0.04), run(1, -0.04, 0.0)]
    pooled = curves.pooled_differences(runs, curves.aggregate(runs))["test"]["1"]
    mae = pooled["mae"]
    # global has the lower mean MAE (0.83 < 0.85): it is the baseline to beat
    assert mae["best_baseline"] == "global"
    assert mae["diff"] == pytest.approx(-0.02)
    assert mae["per_seed"] == [-0.04, 0.0]
    # two strata of se 0.01: the mean's se is sqrt(2) * 0.01 / 2
    half = z * np.sqrt(2) * 0.01 / 2
    assert mae["interval"] == pytest.approx([-0.02 - half, -0.02 + half], abs=1e-4)
    assert mae["vs"]["item_mean"]["diff"] == pytest.approx(-0.05)
    # nDCG: equal means, the tie goes to either baseline; the pooled cell is that baseline's
    assert pooled["ndcg_at_3"]["diff"] == pytest.approx(
        pooled["ndcg_at_3"]["vs"][pooled["ndcg_at_3"]["best_baseline"]]["diff"])
    # without bootstrap intervals the pooled difference has none
    for r in runs:
        for by_k in r["differences"]["test"].values():
            for cell in by_k["1"].values():
                cell["interval"] = None
    assert curves.pooled_differences(runs, curves.aggregate(runs))["test"]["1"]["mae"][
        "interval"] is None
    table = curves.to_markdown({"dataset": "d", "protocol": "p", "seeds": [0, 1],
                                "candidate": "ridge", "command": "c", "machine": "m",
                                "date": "t", "git": "g", "wall_seconds": 1.0, "runs": [],
                                "curves": {}, "differences": {"test": {"1": pooled}}})
    assert "minus the best baseline" in table and "global" in table



def test_curves_pool_merges_result_files_of_distinct_seeds(tmp_path: Path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import curves

    z = curves.Z

    def run(seed, diff):
        cell = {"diff": diff, "interval": [diff - z * 0.01, diff + z * 0.01]}
        curve = {m: {"1": {"mae": v, "ndcg_at_3": 0.7}} for m, v in
                 (("ridge", 0.80 + diff), ("item_mean", 0.85))}
        return {"seed": seed, "curves": {"test": curve}, "tasks": {"test": 3},
                "training": {"best_step": 50}, "seconds": {},
                "differences": {"test": {"item_mean": {"1": {"mae": cell,
                                                             "ndcg_at_3": dict(cell)}}}}}

    def result(seeds, git):
        return {"dataset": "ml100k", "protocol": "melu", "candidate": "ridge",
                "overrides": {"set": []}, "variant": None, "seeds": seeds, "git": git,
                "date": "d", "machine": "m", "wall_seconds": 10.0, "command": "c",
                "runs": [run(s, -0.01 * (s + 1)) for s in seeds]}

    a, b = result([0, 1], "aaa"), result([2, 3], "bbb")
    pooled = curves.pool_results([b, a], ["b.json", "a.json"])
    every = a["runs"] + b["runs"]
    assert pooled["seeds"] == [0, 1, 2, 3] and pooled["git"] == "bbb + aaa"
    assert pooled["wall_seconds"] == 20.0
    # the same numbers as one run over the four seeds
    assert pooled["differences"] == curves.pooled_differences(every, curves.aggregate(every))
    assert pooled["differences"]["test"]["1"]["mae"]["diff"] == pytest.approx(-0.025)
    assert curves.seeds_tag(pooled["seeds"]) == "seeds0-3"
    assert curves.seeds_tag([0, 2, 5]) == "seeds0_2_5"
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\]"):
        curves.pool_results([a, result([1, 2], "c")], ["a.json", "c.json"])
    other = dict(b, protocol="user-split")
    with pytest.raises(ValueError, match="protocol differs"):
        curves.pool_results([a, other], ["a.json", "o.json"])
    with pytest.raises(ValueError, match="at least two"):
        curves.pool_results([a], ["a.json"])
    assert [sorted(r) for r in pooled["runs"]] == [sorted(set(r) - {"curves"}) for r in every]
    with pytest.raises(ValueError, match="p.json is itself pooled"):
        curves.pool_results([a, pooled], ["a.json", "p.json"])
    with pytest.raises(ValueError, match="x.json is not a result"):
        curves.pool_results([a, {"seeds": [4]}], ["a.json", "x.json"])
    # the CLI writes the pooled JSON and table under the seeds' tag
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert curves.main(["--pool", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                        "--out-dir", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "curves_ml100k_melu_seeds0-3.json").read_text())
    assert written["differences"] == pooled["differences"]
    assert "minus the best baseline" in (tmp_path / "out" / "curves_ml100k_melu_seeds0-3.md"
                                         ).read_text()

def test_cv_scores_average_over_training_seeds_per_task():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cv_tune

    def run(shift):  # two folds of 2 and 1 held-out tasks, 2 support sizes
        fold = lambda n: {"mae": np.arange(2 * n, dtype=float).reshape(2, n) + shift}  # noqa: E731
        return {"ridge": [fold(2), fold(1)], "item_mean": [fold(2), fold(1)],
                **({"only_here": [fold(2), fold(1)]} if shift == 0 else {})}

    out = cv_tune.average_over_seeds([run(0.0), run(1.0)])
    assert set(out) == {"ridge", "item_mean"}  # a method a seed lacks is dropped
    # the folds side by side (2 + 1 tasks), each task the mean of its two seeds' scores
    assert out["ridge"]["mae"].shape == (2, 3)
    assert out["ridge"]["mae"][1].tolist() == [2.5, 3.5, 1.5]
    assert cv_tune.average_over_seeds([run(1.0)])["ridge"]["mae"][0].tolist() == [1.0, 2.0, 1.0]


def test_cv_suite_summary_weights_datasets_equally():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cv_tune

    def table(d):  # cross_validate's shape: per support size, then method or pair
        pair = {"ridge - item_mean": {m: f"{d:+.4f} ± 0.0100" for m in cv_tune.PAIRED}}
        return {"0": pair, "all": pair, "_table": "| markdown |"}

    out = cv_tune.suite_summary({"ml100k": table(-0.02), "lowrank": table(0.04)})
    assert set(out) == {"0", "all"}
    assert out["all"]["ridge - item_mean"]["mae"] == {"mean": 0.01, "ml100k": -0.02,
                                                      "lowrank": 0.04}


def test_cv_compare_scores_pairs_two_settings_task_by_task(tmp_path: Path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cv_tune

    shots = np.asarray(["0", "all"])
    base = {f"ridge/{k}": np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]) for k in cv_tune.PAIRED}
    np.savez(tmp_path / "b.npz", shots=shots, **base)
    np.savez(tmp_path / "a.npz", shots=shots,
             **{k: v + np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]]) for k, v in base.items()})
    out = cv_tune.compare_scores(tmp_path / "a.npz", tmp_path / "b.npz")
    assert out["0"]["mae"] == "+0.2000 ± 0.0577" and out["all"]["mae"] == "+0.0000 ± 0.0000"
    np.savez(tmp_path / "c.npz", shots=shots, **{k: v[:, :2] for k, v in base.items()})
    with pytest.raises(SystemExit, match="different tasks"):
        cv_tune.compare_scores(tmp_path / "c.npz", tmp_path / "b.npz")


def test_acceptance_classifies_each_cell_against_its_worst_baseline(tmp_path: Path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import acceptance

    # MAE: lower is better; nDCG: higher is better
    assert acceptance.standing("mae", -0.02, [-0.03, -0.01]) == "ahead"
    assert acceptance.standing("mae", -0.01, [-0.03, 0.01]) == "ahead~"
    assert acceptance.standing("mae", 0.01, [-0.01, 0.03]) == "behind~"
    assert acceptance.standing("mae", 0.02, [0.01, 0.03]) == "behind"
    assert acceptance.standing("ndcg_at_3", 0.02, [0.01, 0.03]) == "ahead"
    assert acceptance.standing("ndcg_at_3", -0.02, [-0.03, -0.01]) == "behind"
    assert acceptance.standing("ndcg_at_3", 0.0, [-0.01, 0.01]) == "behind~"  # a tie is not ahead
    with pytest.raises(ValueError, match="reversed"):
        acceptance.standing("mae", 0.0, [0.1, -0.1])

    def vs(**diffs):  # baseline -> (diff, half-width)
        return {"vs": {b: {"diff": d, "interval": [d - w, d + w]} for b, (d, w) in diffs.items()}}

    # 0 ratings: behind global within its interval, level with item_mean: the clause holds
    c0 = acceptance.cell("ndcg_at_3", "0", vs(item_mean=(0.001, 0.004), glob=(-0.003, 0.004)))
    assert (c0["standing"], c0["against"], c0["holds"]) == ("behind~", "glob", True)
    # ... and fails once item_mean is ahead beyond the interval
    assert not acceptance.cell("ndcg_at_3", "0", vs(item_mean=(-0.01, 0.004)))["holds"]
    # from 1 rating: the worst baseline decides; a point lead holds unless --strict
    c1 = acceptance.cell("mae", "1", vs(item_mean=(-0.05, 0.01), glob=(-0.004, 0.006)))
    assert (c1["standing"], c1["against"], c1["holds"]) == ("ahead~", "glob", True)
    assert not acceptance.cell("mae", "1", vs(item_mean=(-0.05, 0.01), glob=(-0.004, 0.006)),
                               "strict")["holds"]
    # among baselines of one standing, the closest one is named
    c2 = acceptance.cell("mae", "3", vs(item_mean=(-0.05, 0.01), glob=(-0.02, 0.01)))
    assert (c2["standing"], c2["against"]) == ("ahead", "glob")
    with pytest.raises(ValueError, match="bootstrap 0"):
        acceptance.cell("mae", "1", {"vs": {"glob": {"diff": 0.1, "interval": None}}})
    with pytest.raises(ValueError, match="none of point, strict, gate"):
        acceptance.cell("mae", "1", vs(glob=(0.0, 0.01)), "lenient")
    # the gate's reading: behind within the interval holds from 1 rating on, behind beyond it
    # fails; at full support the point estimate must also be ahead; at 0 every baseline counts
    behind_within = vs(item_mean=(-0.05, 0.01), glob=(0.003, 0.006))
    assert not acceptance.cell("mae", "3", behind_within)["holds"]
    assert acceptance.cell("mae", "3", behind_within, "gate")["holds"]
    assert not acceptance.cell("mae", "3", vs(glob=(0.008, 0.006)), "gate")["holds"]
    assert not acceptance.cell("mae", "all", behind_within, "gate")["holds"]
    assert acceptance.cell("mae", "all", vs(glob=(-0.003, 0.006)), "gate")["holds"]
    zero = vs(item_mean=(0.0, 0.004), glob=(0.01, 0.004))
    assert acceptance.cell("mae", "0", zero)["holds"]
    assert not acceptance.cell("mae", "0", zero, "gate")["holds"]

    record = {"dataset": "d", "protocol": "user-split", "seeds": [0, 1], "candidate": "ridge",
              "curves": {"test": {"ridge": {"all": {"gap_closed": {"mean": 0.6, "min": 0.5,
                                                                   "max": 0.7}}}}},
              "differences": {"test": {
                  "0": {"mae": vs(item_mean=(0.0, 0.01))},
                  "1": {"mae": vs(item_mean=(0.01, 0.005))},
                  "all": {"mae": vs(item_mean=(-0.1, 0.01))}}}}
    path = tmp_path / "curves_d.json"
    path.write_text(json.dumps(record))
    assert acceptance.main([str(path), "--json", str(tmp_path / "cells.json")]) == 0
    out = capsys.readouterr().out
    assert "Cells that hold: 2 of 3" in out and "**behind +0.0100" in out and "60.0%" in out
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert cells["lines"][0]["holds"] is False and cells["gap_closed"]["d"]["mean"] == 0.6
    assert cells["reading"] == "point"
    # the same record under the gate's rule: k=1 is behind beyond its interval, still a failure
    assert acceptance.main([str(path), "--reading", "gate"]) == 0
    assert "Cells that hold: 2 of 3, reading gate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        acceptance.main([str(path), "--strict", "--reading", "gate"])
    assert "--strict contradicts" in capsys.readouterr().err
    path.write_text("{}")
    with pytest.raises(SystemExit):
        acceptance.main([str(path)])
    assert "cannot be read as curves.py's result" in capsys.readouterr().err


def test_acceptance_record_files_exist_and_read():
    """The record acceptance.py reads by default is in the repository (RESULTS.md cites it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import acceptance

    for path in acceptance.RECORD:
        lines = acceptance.read(json.loads(path.read_text()), str(path))
        assert lines and all(line["cells"] for line in lines)
