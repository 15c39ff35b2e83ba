"""Prequential replay of MovieLens-100K through the online loop: /feedback -> ingest -> retrain
-> gate, week by week, comparing (a) the frozen first model, (b) warm-started weekly retraining
(``train.init_from: champion``) and (c) weekly retraining from scratch.

ML-100K in time order: the ratings before ``--cut`` of its time span (default 60%) are the
first dataset version (a DVC-tracked ``data/`` in a temporary workspace), on which one model
is trained, gated and registered as the champion of both arms (b) and (c) (two registered
model names in one MLflow SQLite store). Then, for each of ``--weeks`` weeks:

1. every model in place at the start of the week is scored on the users first seen that week
   (prequential: none of them is in any training data): for each such user with at least 11
   ratings in the week, the support set is the week's ratings but the last 10, the query the
   last 10; the served ONNX graph (metarec.serve.Recommender) adapts to the support and scores
   the query; MAE and nDCG@3 per user, mean and standard error over users;
2. the week's ratings are posted to POST /feedback (the real app, in process, batches of
   ``feedback.max_batch``; new users' attributes on their events) and `data ingest` folds them
   into a new data.dvc version;
3. the data stages run once (prepare, features, tasks), the baselines are trained once, and
   each arm meta-trains (warm: from its champion; scratch: fresh), evaluates (the champion
   re-evaluated on the new test users), exports and registers through its gate with
   auto-promotion, so a refused model leaves that arm's champion in place.

Budget for two shared CPU cores (stated in RESULTS.md): ``--max-steps`` caps meta-training
(early stopping on validation decides within it), bootstrap samples are reduced, the gate is
a lighter gate than the default: item_mean as the only baseline, every k but 0 (the README's
demo gate without the network baselines, whose ~60-user nDCG@3 intervals at k=1 refuse an
under-trained first model for noise), the re-evaluated champion with its margin, and
``allow_no_training_gain`` (a warm start whose best validated step is its start still carries
the week's item statistics).

    .venv/bin/python benchmarks/replay.py --weeks 10 --max-steps 1000
    .venv/bin/python benchmarks/replay.py --table benchmarks/results/replay.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metarec.config import Config, config_from_dict  # noqa: E402

WEEK = 7 * 24 * 3600
QUERY = 10
ARMS = ("warm", "scratch")
log = logging.getLogger("replay")


def _ml100k(scratch: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """The RecBole ML-100K files (from the recbole wheel) and the ratings/users as frames."""
    from metarec.config import DataConfig
    from metarec.data.fetch import stage_dataset

    stage_dataset(DataConfig(), None, scratch / "full", scratch)
    folder = scratch / "full" / "ml-100k"
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    users.columns = ["user_id", "age", "gender", "occupation", "zip_code"]
    return inter.astype("int64"), users, folder


def _write_base(folder: Path, base: pd.DataFrame, src: Path) -> Path:
    """The first dataset version: the ratings before the cut and their users, every item."""
    out = folder / "base"
    out.mkdir(parents=True)
    lines = (src / "ml-100k.inter").read_text().splitlines()
    keep = set(zip(base.user_id, base.item_id, base.timestamp))
    rows = [ln for ln in lines[1:]
            if (lambda v: (int(v[0]), int(v[1]), int(float(v[3]))))(ln.split("\t")) in keep]
    (out / "ml-100k.inter").write_text("\n".join([lines[0], *rows]) + "\n")
    known = set(base.user_id)
    ulines = (src / "ml-100k.user").read_text().splitlines()
    (out / "ml-100k.user").write_text("\n".join(
        [ulines[0], *[ln for ln in ulines[1:] if int(ln.split("\t")[0]) in known]]) + "\n")
    shutil.copyfile(src / "ml-100k.item", out / "ml-100k.item")
    return out


def _params(ws: Path, max_steps: int, bootstrap: int) -> dict[str, Any]:
    return {
        "tracking": {"tracking_uri": f"sqlite:///{ws}/mlflow.db"},
        "features": {"cache_dir": str(REPO / ".metarec-cache" / "embeddings")},
        "feedback": {"store_uri": f"sqlite:///{ws}/feedback.db"},
        "train": {"max_steps": max_steps, "progress": False, "checkpoint_every": 0},
        "evaluation": {"bootstrap_samples": bootstrap},
        "validation": {"data_docs": False},
        "gate": {"curve_shots": [1, 3, 5, 10, "all"], "baselines": ["item_mean"],
                 "auto_promote": True, "allow_no_training_gain": True},
    }


def _arm(cfg: Config, arm: str, init: str) -> Config:
    def moved(out_dir: str) -> str:
        return str(Path("artifacts") / arm / Path(out_dir).name)

    return dataclasses.replace(
        cfg, tracking=dataclasses.replace(cfg.tracking, registered_model=arm),
        train=dataclasses.replace(cfg.train, out_dir=moved(cfg.train.out_dir), init_from=init),
        evaluation=dataclasses.replace(cfg.evaluation, out_dir=moved(cfg.evaluation.out_dir)),
        export=dataclasses.replace(cfg.export, out_dir=moved(cfg.export.out_dir)))


def _data_stages(cfg: Config) -> None:
    from metarec.data.prepare import prepare_dataset
    from metarec.features.build import prepare_features
    from metarec.pipeline.tasks import build_task_sets
    from metarec.pipeline.train import train_baseline_models

    tables = prepare_dataset(cfg.data, feedback_folder=cfg.feedback.folder)
    features = prepare_features(cfg.features, cfg.tasks, cfg.seed, tables)
    build_task_sets(cfg, tables, features)
    train_baseline_models(cfg)  # into artifacts/train: shared by both arms


def _retrain(cfg: Config, arm_cfg: Config) -> dict[str, Any]:
    """Meta-train, evaluate (champion re-evaluated), export, register through the gate."""
    from metarec.dvc import dataset_hash
    from metarec.pipeline.evaluate import evaluate_models
    from metarec.pipeline.export import export_model
    from metarec.pipeline.register import register_candidate
    from metarec.pipeline.train import GLOBAL_FILE, train_meta_model

    out = Path(arm_cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(cfg.train.out_dir) / GLOBAL_FILE, out / GLOBAL_FILE)
    t0 = time.perf_counter()
    summary = train_meta_model(arm_cfg, resume=False, track=False)
    train_s = time.perf_counter() - t0
    evaluate_models(arm_cfg)
    export_model(arm_cfg)
    reg = register_candidate(arm_cfg, data_hash=dataset_hash(cfg.data.dvc_file))
    return {"steps": summary["steps"], "best_step": summary["best_step"],
            "train_seconds": round(train_s, 1), "init": summary["init"].get("from"),
            "registered": reg.version, "gate": reg.decision.reasons[0][:160]}


def _new_user_tasks(week: pd.DataFrame, seen: set[int]) -> list[tuple[int, pd.DataFrame]]:
    out = []
    for user, rows in week[~week.user_id.isin(seen)].groupby("user_id"):
        rows = rows.sort_values(["timestamp", "item_id"], kind="stable")
        if len(rows) >= QUERY + 1:
            out.append((int(user), rows))
    return out


def _score(rec, tasks, users: pd.DataFrame) -> dict[str, float]:
    from metarec.evaluation.metrics import ndcg_at_k

    maes, ndcgs = [], []
    attrs = users.set_index("user_id")
    for user, rows in tasks:
        a = attrs.loc[str(user)]
        user_cat = rec.encode_user({"age": int(a.age), "gender": a.gender,
                                    "occupation": a.occupation, "zip_code": a.zip_code})
        support, query = rows.iloc[:-QUERY].tail(rec.max_ratings), rows.iloc[-QUERY:]
        s_rows = np.array([rec.row_of[int(i)] for i in support.item_id], np.int64)
        q_rows = np.array([rec.row_of[int(i)] for i in query.item_id], np.int64)
        pred = rec.scores(user_cat, s_rows, support.rating.to_numpy(np.float32), q_rows)
        true = query.rating.to_numpy(np.float64)
        maes.append(float(np.abs(np.clip(pred, 1, 5) - true).mean()))
        ndcgs.append(float(ndcg_at_k(pred[None], true[None], np.ones((1, QUERY)), 3)[0]))
    n = len(maes)
    se = (lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"))
    return {"users": n, "mae": float(np.mean(maes)), "mae_se": se(maes),
            "ndcg_at_3": float(np.mean(ndcgs)), "ndcg_at_3_se": se(ndcgs),
            "per_user_mae": maes}


def _post_week(client, week: pd.DataFrame, users: pd.DataFrame, batch: int) -> dict[str, Any]:
    attrs = users.set_index("user_id")
    events = []
    for r in week.sort_values("timestamp", kind="stable").itertuples():
        a = attrs.loc[str(r.user_id)]
        events.append({"event_id": f"ml-{r.user_id}-{r.item_id}-{r.timestamp}",
                       "user_id": int(r.user_id), "item_id": int(r.item_id),
                       "rating": int(r.rating), "timestamp": int(r.timestamp),
                       "user_features": {"age": int(a.age), "gender": a.gender,
                                         "occupation": a.occupation, "zip_code": a.zip_code}})
    t0, added = time.perf_counter(), 0
    for start in range(0, len(events), batch):
        resp = client.post("/feedback", json={"events": events[start:start + batch]})
        resp.raise_for_status()
        added += resp.json()["added"]
    return {"events": len(events), "added": added,
            "seconds": round(time.perf_counter() - t0, 2)}


def table(path: Path) -> str:
    """The markdown table of a replay JSON: per week, the models' MAE and nDCG@3 on the week's
    new users (mean +- standard error), then the retrains that followed; and the warm - scratch
    MAE difference paired by user over every week after the first retrain."""
    data = json.loads(path.read_text())
    lines = ["| week | from | new users | MAE frozen | MAE warm | MAE scratch | nDCG@3 frozen "
             "| nDCG@3 warm | nDCG@3 scratch | then: warm steps (best) / s | scratch steps "
             "(best) / s | registered warm / scratch |", "|" + "---|" * 12]
    diffs = []
    for w in data["weeks"]:
        sc = w["scores"]
        cell = (lambda m, k: f"{sc[m][k]:.4f} ± {sc[m][k + '_se']:.4f}")
        r = w.get("retrain")
        steps = (lambda a: f"{r[a]['steps']} ({r[a]['best_step']}) / {r[a]['train_seconds']:.0f}"
                 ) if r else (lambda a: "-")
        reg = (f"{r['warm']['registered'] or 'refused'} / {r['scratch']['registered'] or 'refused'}"
               if r else "-")
        lines.append(f"| {w['week']} | {w['from']} | {w['new_users']} | {cell('frozen', 'mae')} | "
                     f"{cell('warm', 'mae')} | {cell('scratch', 'mae')} | "
                     f"{cell('frozen', 'ndcg_at_3')} | {cell('warm', 'ndcg_at_3')} | "
                     f"{cell('scratch', 'ndcg_at_3')} | {steps('warm')} | {steps('scratch')} | "
                     f"{reg} |")
        if w["week"] > 1:
            diffs += [a - b for a, b in zip(sc["warm"]["per_user_mae"],
                                            sc["scratch"]["per_user_mae"])]
            diffs_f = [a - b for a, b in zip(sc["warm"]["per_user_mae"],
                                             sc["frozen"]["per_user_mae"])]
            w["_vs_frozen"] = diffs_f
    if diffs:
        d = np.asarray(diffs)
        f = np.asarray([x for w in data["weeks"] for x in w.get("_vs_frozen", [])])
        sf = np.asarray([a - b for w in data["weeks"] if w["week"] > 1 for a, b in zip(
            w["scores"]["scratch"]["per_user_mae"], w["scores"]["frozen"]["per_user_mae"])])
        se = (lambda v: v.std(ddof=1) / np.sqrt(len(v)))
        lines += ["", f"Paired by user over weeks 2..{data['weeks'][-1]['week']} ({len(d)} new "
                  f"users): MAE warm - scratch {d.mean():+.4f} ± {se(d):.4f} (SE); warm - "
                  f"frozen {f.mean():+.4f} ± {se(f):.4f}; scratch - frozen {sf.mean():+.4f} "
                  f"± {se(sf):.4f}."]
    return "\n".join(lines)


def main() -> None:  # noqa: C901 - one linear script
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--cut", type=float, default=0.6)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/replay.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("dvc", "great_expectations", "urllib3", "alembic", "httpx", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.update(DVC_NO_ANALYTICS="1", DO_NOT_TRACK="true", GX_ANALYTICS_ENABLED="false",
                      HF_HUB_OFFLINE="1", MLFLOW_ENABLE_ASYNC_LOGGING="false")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("METAREC_FEEDBACK_URI", None)
    args.out = args.out.resolve()  # the run works inside its workspace
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="metarec-replay-"))
    ws.mkdir(parents=True, exist_ok=True)
    os.chdir(ws)
    from fastapi.testclient import TestClient

    from metarec.data.fetch import fetch
    from metarec.feedback.ingest import ingest
    from metarec.registry import fetch_verified
    from metarec.serve import Recommender
    from metarec.serving.app import create_app
    from metarec.serving.profiles import Profiles

    t_start = time.perf_counter()
    inter, users, src = _ml100k(ws / "source")
    t0, t1 = int(inter.timestamp.min()), int(inter.timestamp.max())
    cut = t0 + int(args.cut * (t1 - t0))
    base = inter[inter.timestamp < cut]
    Path("params.yaml").write_text(yaml.safe_dump(_params(ws, args.max_steps, args.bootstrap)))
    cfg = config_from_dict(yaml.safe_load(Path("params.yaml").read_text()))
    fetch(cfg.data, path=_write_base(ws / "source", base, src), root=ws, record=True)
    log.info("cut at %s: %d ratings of %d users before it", pd.Timestamp(cut, unit="s"),
             len(base), base.user_id.nunique())

    _data_stages(cfg)
    first = _retrain(cfg, _arm(cfg, ARMS[0], "none"))
    log.info("first model: %s", first)
    # The same first model is the champion of the scratch arm too.
    from metarec.pipeline.register import register_candidate
    from metarec.dvc import dataset_hash

    scratch0 = _arm(cfg, ARMS[1], "none")
    shutil.copytree(_arm(cfg, ARMS[0], "none").train.out_dir, scratch0.train.out_dir,
                    dirs_exist_ok=True)
    shutil.copytree(_arm(cfg, ARMS[0], "none").evaluation.out_dir,
                    scratch0.evaluation.out_dir, dirs_exist_ok=True)
    shutil.copytree(_arm(cfg, ARMS[0], "none").export.out_dir, scratch0.export.out_dir,
                    dirs_exist_ok=True)
    register_candidate(scratch0, data_hash=dataset_hash(cfg.data.dvc_file))
    frozen = Recommender.load(str(fetch_verified("models:/warm/1", cfg.tracking.tracking_uri)))

    profiles = Profiles(cfg.feedback, cfg.validation)
    client = TestClient(create_app(str(_arm(cfg, ARMS[0], "none").export.out_dir),
                                   dataclasses.replace(cfg.serve, max_body_bytes=1 << 20),
                                   profiles=profiles))
    seen = set(int(u) for u in base.user_id)
    weeks = []
    for w in range(args.weeks):
        lo, hi = cut + w * WEEK, cut + (w + 1) * WEEK
        week = inter[(inter.timestamp >= lo) & (inter.timestamp < hi)]
        tasks = _new_user_tasks(week, seen)
        row: dict[str, Any] = {"week": w + 1, "from": str(pd.Timestamp(lo, unit="s").date()),
                               "ratings": len(week), "new_users": len(tasks)}
        models = {"frozen": frozen}
        for arm in ARMS:
            models[arm] = Recommender.load(f"models:/{arm}@champion",
                                           tracking_uri=cfg.tracking.tracking_uri)
        row["scores"] = {name: _score(rec, tasks, users) for name, rec in models.items()}
        log.info("week %d: %s", w + 1, {k: (round(v["mae"], 4), round(v["ndcg_at_3"], 4))
                                        for k, v in row["scores"].items()})
        if w + 1 < args.weeks:  # the week's feedback -> the next data version -> retrain
            row["feedback"] = _post_week(client, week, users, cfg.feedback.max_batch)
            t_ing = time.perf_counter()
            res = ingest(cfg)
            row["ingest"] = {"accepted": res.accepted, "quarantined": res.quarantined,
                             "seconds": round(time.perf_counter() - t_ing, 1)}
            t_data = time.perf_counter()
            _data_stages(cfg)
            row["data_stages_seconds"] = round(time.perf_counter() - t_data, 1)
            row["retrain"] = {arm: _retrain(cfg, _arm(cfg, arm, init))
                              for arm, init in (("warm", "champion"), ("scratch", "none"))}
            log.info("week %d retrains: %s", w + 1, row["retrain"])
        seen |= set(int(u) for u in week.user_id)
        weeks.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} CPUs visible (shared)", "cut": str(pd.Timestamp(cut, unit="s")),
            "first_model": first, "weeks": weeks,
            "seconds": round(time.perf_counter() - t_start, 1)}, indent=2))
    log.info("done in %.0f s -> %s", time.perf_counter() - t_start, args.out)


if __name__ == "__main__":
    main()
