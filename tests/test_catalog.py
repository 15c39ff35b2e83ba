"""The item catalog on the real stack: new items reach users without retraining.

One workspace (synthetic CSV data, MeLU protocol, a short training, the report, an export
whose catalog holds only the items released up to the threshold) serves every test: the
"new" items are added afterwards with `metarec items add`, as a team would add tomorrow's
items. Checked: parity of a new item's score with PyTorch (1e-5), the item_cold and
user_item_cold metrics through the catalog equal the report's, bad rows, retiring, immutable
versions, the CLI, MLflow lineage both ways, and a catalog swap in a serving process under
load without a failed request.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from metarec.catalog.artifact import read_catalog
from metarec.catalog.evaluation import catalog_metrics
from metarec.evaluation.catalog import is_full_catalog
from metarec.catalog.items import ItemsError, canonical_items, spec_of
from metarec.catalog.ops import add_items, open_model, retire_items
from metarec.catalog.scoring import CatalogGraphs
from metarec.catalog.store import LATEST
from metarec.cli import main
from metarec.registry.integrity import IntegrityError
from metarec.serve import Recommender, RequestError
from tests.catalog_workspace import build_workspace, new_item_ids


OLD: list[int] = []  # the items of catalog version 1 (set by the fixture)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """(cfg, tables, report, new item ids, new-items CSV) of a workspace whose export's
    catalog lacks the new items."""
    root = tmp_path_factory.mktemp("catalog_ws")
    cfg, tables, report = build_workspace(root, catalog_item_ids=None)
    new = new_item_ids(tables)
    OLD[:] = sorted(set(tables.items["item_id"].astype(int)) - set(new))
    from metarec.pipeline.export import export_model

    export_model(cfg, catalog_item_ids=OLD)  # catalog version 1: the items known at export
    raw = pd.read_csv(root / "data" / "csv" / "items.csv")
    raw[raw["item_id"].isin(new)].to_csv(root / "new_items.csv", index=False)
    return cfg, tables, report, new, root / "new_items.csv"


def fresh(ws, tmp_path: Path):
    """The workspace's config with a catalog store of this test's own (version 1 only)."""
    from dataclasses import replace

    cfg = ws[0]
    return replace(cfg, catalog=replace(cfg.catalog, dir=str(tmp_path / "catalogs")))


def test_new_items_are_added_and_score_as_pytorch(ws, tmp_path: Path) -> None:
    from metarec.adaptation.kinds import adapted_scores
    from metarec.pipeline.inputs import load_inputs
    from metarec.pipeline.train import load_meta_model

    cfg, _, _, new, path = ws
    cfg = fresh(ws, tmp_path)
    export = str(cfg.export.out_dir)
    before = Recommender(export, catalog_dir=cfg.catalog.dir)
    with pytest.raises(RequestError, match="unknown item id"):
        before.recommend(None, {new[0]: 5})
    change = add_items(cfg, path, export)
    assert change.version == 2 and change.added == new and change.mlflow is None
    rec = Recommender(export, catalog_dir=cfg.catalog.dir)
    assert rec.catalog.version == 2 and set(new) <= set(rec.item_ids.tolist())
    # a user who rated new and old items; every item scored through the catalog path
    features = load_inputs(cfg.features, cfg.tasks).features
    model, learner = load_meta_model(cfg, features)
    ratings = {new[0]: 5.0, new[1]: 1.0, OLD[0]: 4.0, OLD[1]: 2.0}
    items = rec.recommend({"gender": "F", "age": 30}, ratings, k=len(rec.item_ids))
    got = {i.item_id: i.score for i in items}
    row = {int(i): r for r, i in enumerate(features.item_ids)}
    user = torch.as_tensor(rec.encode_user({"gender": "F", "age": 30}))
    want = adapted_scores(model, learner.adaptation(), user,
                          torch.tensor([row[i] for i in ratings]),
                          torch.tensor(list(ratings.values())), torch.ones(len(ratings)),
                          torch.arange(len(features.item_ids))).numpy()
    new_left = [i for i in new if i not in ratings]
    assert set(new_left) <= set(got)
    err = max(abs(got[i] - float(want[row[i]])) for i in got)
    assert err <= 1e-5, err


def test_item_cold_metrics_through_the_catalog_equal_the_report(ws, tmp_path: Path) -> None:
    from metarec.pipeline.inputs import load_inputs

    cfg, _, report, _, path = ws
    cfg = fresh(ws, tmp_path)
    add_items(cfg, path, str(cfg.export.out_dir))
    inputs = load_inputs(cfg.features, cfg.tasks)
    with open_model(str(cfg.export.out_dir), None) as model:
        graphs = CatalogGraphs(model.export_dir, model.entry)
        catalog = model.store(cfg.catalog.dir).read()
        v1 = read_catalog(model.export_dir / "catalog")
        for scenario in ("item_cold", "user_item_cold"):
            # the query-set metrics (the full-catalog ones rank every item: not this path's)
            want = {n: v for n, v in report.metrics[scenario][report.candidate].items()
                    if not is_full_catalog(n)}
            got = catalog_metrics(graphs, catalog, inputs.features, inputs.sets[scenario],
                                  list(want))
            assert {"mae", "ndcg_at_3"} <= set(want)
            for name in want:
                assert got[name] == pytest.approx(want[name], abs=1e-5), (scenario, name)
            # before the items were added, the catalog cannot score these scenarios
            with pytest.raises(ValueError, match="not in catalog version 1; add them first"):
                catalog_metrics(graphs, v1, inputs.features, inputs.sets[scenario], ["mae"])


def test_canonical_items_match_the_dataset_reader(ws) -> None:
    cfg, tables, _, _, _ = ws
    raw = pd.read_csv(Path(cfg.data.raw_dir) / "csv" / "items.csv", dtype=str,
                      keep_default_na=False, na_values=[""])
    with open_model(str(cfg.export.out_dir), None) as model:
        spec = spec_of(model.entry["item_encoders"])
    ours = canonical_items(raw, spec, cfg.data).frame
    theirs = tables.items.sort_values("item_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[theirs.columns].sort_values("item_id")
                                  .reset_index(drop=True), theirs, check_dtype=False)


BAD_ROWS = [
    ("item_id,title,year,genres\n5001,Fine film,1999,comedy\nx12,Bad id,1999,drama\n",
     ["item id integer", "'x12'", "line 3"]),
    ("item_id,title,year,genres\n5001,A,1999,comedy\n5001,B,1998,drama\n",
     ["unique id", "5001"]),
    ("item_id,title,year,genres\n5001,A,nineteen,comedy\n",
     ["numeric feature", "'nineteen'", "line 2"]),
    ("item_id,title,year,genres\n5001,A,1999,comedy\n5002,  ,1999,comedy\n",
     ["title nonempty", "empty or blank", "line 3"]),
    ("item_id,title,year,genres\n5001,,1999,comedy\n", ["not null", "title", "line 2"]),
    ("item_id,name,year,genres\n5001,A,1999,comedy\n", ["column exists", "'title'"]),
    ("item_id,title,year,genres\n5001,A,1999,comedy\n{old},Known,1990,drama\n",
     ["already in catalog version 1", "{old} (line 3)"]),
]


@pytest.mark.parametrize("text, fragments", BAD_ROWS)
def test_bad_item_rows_are_named_and_nothing_is_written(ws, tmp_path: Path, text, fragments):
    cfg = fresh(ws, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(text.format(old=OLD[0]))
    with pytest.raises(ItemsError) as err:
        add_items(cfg, bad, str(cfg.export.out_dir))
    for fragment in fragments:
        assert fragment.format(old=OLD[0]) in str(err.value), str(err.value)
    assert "nothing was written" in str(err.value)
    assert not (tmp_path / "catalogs").exists() or not list((tmp_path / "catalogs").rglob(LATEST))


def test_retired_items_are_never_recommended_but_accepted_as_support(ws, tmp_path) -> None:
    cfg = fresh(ws, tmp_path)
    export = str(cfg.export.out_dir)
    rec = Recommender(export, catalog_dir=cfg.catalog.dir)
    everything = [i.item_id for i in rec.recommend(None, {}, k=len(rec.item_ids))]
    gone = everything[:3]
    change = retire_items(cfg, gone, export)
    assert change.version == 2 and change.catalog["active"] == len(everything) - 3
    rec = Recommender(export, catalog_dir=cfg.catalog.dir)
    ranked = [i.item_id for i in rec.recommend(None, {gone[0]: 5, gone[1]: 1},
                                               k=len(rec.item_ids), exclude_seen=False)]
    assert not set(gone) & set(ranked) and len(ranked) == len(everything) - 3
    with pytest.raises(ValueError, match="already retired"):
        retire_items(cfg, [gone[0]], export)
    with pytest.raises(ValueError, match=r"\[999999\] are not in catalog"):
        retire_items(cfg, [999999], export)
    assert Recommender(export, catalog_dir=cfg.catalog.dir).catalog.version == 2


def test_versions_are_immutable_verified_and_never_lost(ws, tmp_path: Path) -> None:
    cfg, _, _, new, path = ws
    cfg = fresh(ws, tmp_path)
    export = str(cfg.export.out_dir)
    # two writers at once: each change lands in its own version, none is lost
    errors = []

    def retire(i: int) -> None:
        try:
            retire_items(cfg, [i], export)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=retire, args=(i,)) for i in OLD[:2]]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    with open_model(export, None) as model:
        store = model.store(cfg.catalog.dir)
        latest = store.read()
        assert latest.version == 3 and latest.manifest["parent"] == 2
        assert set(OLD[:2]) == {int(i) for i in latest.ids[latest.retired]}
        folder = store.path(3)
        assert all(not (p.stat().st_mode & 0o222) for p in folder.iterdir())  # read-only
        vectors = folder / "vectors.npy"
        vectors.chmod(0o644)
        data = bytearray(vectors.read_bytes())
        data[-1] ^= 1
        vectors.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=r"changed \['vectors.npy'\]"):
            store.read(3)
        assert store.read(2).version == 2  # the other versions are untouched


def test_cli_items_add_show_retire(ws, tmp_path: Path) -> None:
    import yaml

    cfg, _, _, new, path = ws
    params = tmp_path / "params.yaml"
    settings = json.loads(json.dumps(cfg.to_dict()))  # the workspace's own configuration
    settings["catalog"]["dir"] = str(tmp_path / "catalogs")
    params.write_text(yaml.safe_dump(settings))
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--params", str(params), "items", *args,
                                    "--model", str(cfg.export.out_dir)])

    out = cli("add", "--items", str(path))
    assert out.exit_code == 0, out.output
    assert f"catalog version 2: added {len(new)} item(s)" in out.output
    shown = json.loads(cli("show").output)
    assert shown["version"] == 2 and shown["changes"]["added"] == new and shown["parent"] == 1
    out = cli("retire", "--ids", f"{new[0]},{new[1]}", "--json")
    assert out.exit_code == 0 and json.loads(out.output)["retired"] == new[:2]
    bad = cli("retire", "--ids", "abc")
    assert bad.exit_code != 0 and "'abc' is not an item id" in bad.output


def test_catalog_versions_logged_beside_the_registered_model(ws, tmp_path: Path,
                                                            monkeypatch) -> None:
    from dataclasses import replace

    from metarec import registry as reg
    from metarec.config import GateConfig
    from metarec.evaluation.gate import gate
    from metarec.evaluation.report import Report

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, _, report, new, path = ws
    tracking = replace(cfg.tracking, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       artifact_root=str(tmp_path / "art"), registered_model="catalog_test")
    cfg = replace(fresh(ws, tmp_path), tracking=tracking)
    # a passing verdict of its own: this test is about the catalog beside the version
    report = Report(candidate="ridge", metrics={"warm": {"ridge": {"mae": 0.8},
                                                         "item_mean": {"mae": 0.95}}},
                    meta_training_gain=True)
    decision = gate(report, None, GateConfig(metrics=("mae",), baselines=("item_mean",),
                                              rule="point"))
    assert decision.passed, decision.reasons
    run_id = reg.log_training_run(tracking, params={}, report=report, decision=decision)
    version = reg.register_if_passed(tracking, run_id, cfg.export.out_dir, decision, report=report)
    uri = f"models:/catalog_test/{version}"
    change = add_items(cfg, path, uri)
    assert change.mlflow == {"name": "catalog_test", "version": version, "run_id": run_id,
                             "path": f"catalogs/{change.catalog['model_key']}/v000002"}
    mlc = reg.client(tracking)
    tags = mlc.get_model_version("catalog_test", str(version)).tags
    assert tags["catalog_version"] == "2"
    assert tags["catalog_content_hash"] == change.catalog["content_hash"]
    manifest = read_catalog(change.folder).manifest
    assert manifest["model"]["registered"] == {"name": "catalog_test", "version": version,
                                               "run_id": run_id}
    # another machine: no local store, the registry's record is found and verified
    rec = Recommender.load(uri, tracking_uri=tracking.tracking_uri,
                           catalog_dir=str(tmp_path / "elsewhere"))
    assert rec.catalog.version == 2 and rec.catalog.content_hash == change.catalog["content_hash"]
    assert len(rec.recommend(None, {new[0]: 5}, k=3)) == 3
    # a change made on that other machine follows the registry's latest version, not its
    # own empty store's version 1
    elsewhere = replace(cfg, catalog=replace(cfg.catalog, dir=str(tmp_path / "elsewhere")))
    third = retire_items(elsewhere, [new[0]], uri)
    assert third.version == 3 and read_catalog(third.folder).manifest["parent"] == 2
    assert mlc.get_model_version("catalog_test", str(version)).tags["catalog_version"] == "3"


def test_legacy_single_graph_export_still_serves(ws, tmp_path: Path) -> None:
    """An export made before catalogs (no catalog entry) runs model.onnx, as before, with the
    same answers as the catalog path over the same items."""
    import shutil

    cfg = fresh(ws, tmp_path)
    old = tmp_path / "old"
    shutil.copytree(cfg.export.out_dir, old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["catalog"]
    meta["format_version"] = 2
    (old / "metadata.json").write_text(json.dumps(meta))
    legacy = Recommender(old)
    assert legacy.catalog is None and legacy.info()["catalog"] is None
    # the catalog path over every item of the model (version 1 here lacks the new ones)
    change = add_items(cfg, ws[4], str(cfg.export.out_dir))
    assert change.version == 2
    current = Recommender(cfg.export.out_dir, catalog_dir=cfg.catalog.dir)
    ratings = {OLD[0]: 5, OLD[1]: 1, OLD[2]: 4}
    a = legacy.recommend(None, ratings, k=10)
    b = current.recommend(None, ratings, k=10)
    assert [i.item_id for i in a] == [i.item_id for i in b]
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 1e-5


def test_chunked_top_k_equals_a_full_sort(ws, tmp_path: Path) -> None:
    cfg = fresh(ws, tmp_path)
    export = str(cfg.export.out_dir)
    rec = Recommender(export, catalog_dir=cfg.catalog.dir)
    graphs, catalog = rec.graphs, rec.catalog
    state = graphs.adapt(catalog, rec.encode_user(None), np.array([0, 5]), np.array([5.0, 1.0]))
    full = graphs.scan_scores(catalog, state, slice(None))
    np.testing.assert_allclose(full, graphs.score(catalog, state, np.arange(len(catalog))),
                               rtol=0, atol=1e-5)  # the numpy scan is score.onnx
    full[[0, 5]] = -np.inf
    order = np.lexsort((np.arange(len(full)), -full))
    for chunk in (1, 7, 64, 10_000):
        top = graphs.top_k(catalog, state, 10, exclude=np.array([5, 0]), chunk=chunk)
        np.testing.assert_array_equal(top.rows, order[:10])
        np.testing.assert_allclose(top.scores, full[order[:10]], rtol=0, atol=1e-6)
    assert len(graphs.top_k(catalog, state, 10_000).rows) == len(catalog)


def test_serving_swaps_catalogs_under_load_without_a_failed_request(ws, tmp_path: Path) -> None:
    """Two workers under steady load; a new catalog version is picked up by each worker's
    watch (no restart, no reload), then POST /reload and a retirement: every request of the
    load is answered 200 throughout."""
    from tests.test_serving import AUTH, Server

    cfg, _, _, new, path = ws
    cfg = fresh(ws, tmp_path)
    srv = Server(tmp_path, str(cfg.export.out_dir), workers=2,
                 serve={"max_queue": 16, "reload_poll_s": 0.2},
                 params={"catalog": {"dir": cfg.catalog.dir, "poll_s": 0.2}})
    body = json.dumps({"ratings": {str(OLD[0]): 5, str(OLD[1]): 1}, "k": 5}).encode()
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(srv.request("POST", "/recommend", body)[0])

    def settled(predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(predicate() for _ in range(8)):  # both workers, most likely
                return True
            time.sleep(0.2)
        return False

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        [t.start() for t in threads]
        with_new = json.dumps({"ratings": {str(new[0]): 5}, "k": 3}).encode()
        assert srv.request("POST", "/recommend", with_new)[0] == 422  # not yet known
        add_items(cfg, path, str(cfg.export.out_dir))
        assert settled(lambda: srv.request("POST", "/recommend", with_new)[0] == 200)
        status, _, out = srv.request("POST", "/reload", headers=AUTH)
        assert status == 200 and out["catalog"]["version"] == 2, out
        assert all(w["catalog"]["version"] == 2 for w in out["workers"])
        top = srv.request("POST", "/recommend", body)[2]["items"][0]["item_id"]
        retire_items(cfg, [top], str(cfg.export.out_dir))
        assert settled(lambda: srv.request("POST", "/recommend", body)[2]["items"][0]["item_id"]
                       != top)
        assert srv.get("/health")[2]["catalog"]["version"] == 3
    finally:
        stop.set()
        [t.join() for t in threads]
        srv.stop()
    assert len(statuses) > 20 and set(statuses) == {200}, sorted(set(statuses))


def test_dagster_asset_and_sensor_add_the_items_file(ws, tmp_path: Path) -> None:
    import dagster as dg
    import yaml

    from metarec.config import CatalogConfig, ScheduleConfig
    from orchestration.catalog_assets import build_items_sensor, item_catalog
    from orchestration.resources import MetarecConfig, MlflowResource

    cfg, _, _, new, path = ws
    sensor = build_items_sensor(ScheduleConfig(), CatalogConfig(items_file=str(path)))
    first = sensor.evaluate_tick(dg.build_sensor_context(cursor=None))
    assert len(first.run_requests) == 1 and first.cursor
    again = sensor.evaluate_tick(dg.build_sensor_context(cursor=first.cursor))
    assert not again.run_requests and "unchanged" in again.skip_message
    missing = build_items_sensor(ScheduleConfig(), CatalogConfig(items_file=str(tmp_path / "no")))
    assert "not found" in missing.evaluate_tick(dg.build_sensor_context()).skip_message

    settings = json.loads(json.dumps(cfg.to_dict()))
    settings["catalog"].update(dir=str(tmp_path / "catalogs"), items_file=str(path))
    settings["serve"]["model_uri"] = str(cfg.export.out_dir)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    result = dg.materialize([item_catalog], resources={
        "metarec": MetarecConfig(params=str(params)), "mlflow": MlflowResource()})
    assert result.success
    meta = result.asset_materializations_for_node("item_catalog")[0].metadata
    assert meta["version"].value == 2 and meta["added"].value == len(new)
    assert Recommender(cfg.export.out_dir, catalog_dir=tmp_path / "catalogs").catalog.version == 2
