"""Serving: Recommender on an export, the HTTP API (happy path, bad requests, fuzz), the CLI,
and loading `models:/metarec@champion` from a real MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.cli import main
from metarec.adaptation.kinds import adapted_scores
from metarec.config import ServeConfig
from metarec.export import export_onnx
from metarec.meta.learners import build_learner
from metarec.features.encoders import BucketEncoder, CategoricalEncoder, FeatureEncoders
from metarec.models.estimator import build_model
from metarec.serve import Recommender, RequestError
from metarec.serving.app import create_app
from tests.test_models import TINY, plain_meta, tiny_features

META = plain_meta(inner_steps=2, inner_lr=0.05)
# gender: cardinality 3 (unknown, F, M); age: 5 buckets (missing + 4) as in tiny_features
ENCODERS = FeatureEncoders(user=(CategoricalEncoder("gender", ("F", "M")),
                                 BucketEncoder("age", (18.0, 25.0, 35.0))))
TOKEN = "test-token-0123456789abcdef"
SERVE = ServeConfig(max_ratings=8, max_k=20, token=TOKEN)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    features = tiny_features()
    model = build_model(features, TINY).eval()
    titles = {int(i): f"Movie {i}" for i in features.item_ids}
    out = tmp_path_factory.mktemp("serve") / "export"
    export_onnx(model, build_learner(model, META).adaptation(), features, out, titles=titles,
                user_encoders=ENCODERS.to_dict()["user"], rating_range=(1.0, 5.0))
    return model, features, out


@pytest.fixture(scope="module")
def client(exported):
    with TestClient(create_app(str(exported[2]), SERVE)) as c:
        yield c


def test_recommend_matches_torch_and_excludes_seen(exported) -> None:
    model, features, out = exported
    rec = Recommender(out, max_ratings=SERVE.max_ratings)
    ratings = {1004: 5, 1010: 1, 1021: 4}
    items = rec.recommend({"gender": "F", "age": 30}, ratings, k=5)
    assert len(items) == 5 and not {i.item_id for i in items} & set(ratings)
    assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
    assert items[0].title == f"Movie {items[0].item_id}"
    # the same scores as PyTorch adapt + decide on every item
    user = torch.tensor([1, 3])  # F; 30 falls in [25, 35) -> bucket 3
    want = adapted_scores(model, build_learner(model, META).adaptation(), user,
                          torch.tensor([4, 10, 21]), torch.tensor([5.0, 1.0, 4.0]), torch.ones(3),
                          torch.arange(30))
    for it in items:
        assert abs(it.score - float(want[it.item_id - 1000])) < 1e-4
    with_seen = rec.recommend({"gender": "F", "age": 30}, ratings, k=30, exclude_seen=False)
    assert len(with_seen) == 30 and set(ratings) <= {i.item_id for i in with_seen}
    # no ratings and no user: the unadapted model for an unknown user still ranks everything
    assert len(rec.recommend(None, {}, k=30)) == 30


@pytest.mark.parametrize("user, ratings, k, match", [
    (None, {999: 5}, 3, r"unknown item id\(s\) \[999\]"),
    (None, {"x1": 5}, 3, "must be integers"),
    ({"shoe_size": 9}, {}, 3, "unknown user feature"),
    ({"age": "old"}, {}, 3, "age"),
    (None, {1004: 9.0}, 3, r"ratings must be numbers in \[1.0, 5.0\]"),
    (None, {1004: float("nan")}, 3, "ratings must be"),
    (None, {1004: 5, "1004": 4}, 3, "more than once"),
    (None, {1000 + i: 3 for i in range(9)}, 3, "at most 8"),
    (None, {}, 0, "k must be"),
])
def test_recommender_rejects_bad_requests(exported, user, ratings, k, match) -> None:
    rec = Recommender(exported[2], max_ratings=SERVE.max_ratings)
    with pytest.raises(RequestError, match=match):
        rec.recommend(user, ratings, k=k)


def test_api_happy_path_health_reload_and_docs(client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["items"] == 30
    assert health.json()["providers"] == ["CPUExecutionProvider"]  # no GPU on CI machines
    body = {"user": {"gender": "M", "age": 19}, "ratings": {"1004": 5, "1010": 2}, "k": 4}
    resp = client.post("/recommend", json=body)
    assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    assert len(items) == 4 and {"item_id", "title", "score"} <= set(items[0])
    assert not {1004, 1010} & {i["item_id"] for i in items}
    assert client.post("/reload").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/reload", headers=auth).json()["status"] == "reloaded"
    assert client.post("/recommend", json=body).json()["items"] == items
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/recommend" in spec["paths"] and "/health" in spec["paths"]


@pytest.mark.parametrize("body, fragment", [
    ({"ratings": {"5": 4, "1004": 5, "77777": 1}}, "[5, 77777]"),
    ({"ratings": {"1004": 5}, "k": 21}, "less than or equal to 20"),
    ({"ratings": {"1004": 5}, "k": 0}, "greater than or equal to 1"),
    ({"ratings": {str(1000 + i): 3 for i in range(9)}}, "at most 8"),
    ({"ratings": {"1004": "five"}}, "ratings"),
    ({"ratings": [1004, 5]}, "ratings"),
    ({"user": {"age": [1, 2]}}, "user"),
    ({"surprise": 1}, "surprise"),
    ({"user": {"planet": "Mars"}}, "planet"),
    # strict JSON types: a bool is not a number, 3.0 is not an integer, 1 is not a bool
    ({"ratings": {"1004": True}}, '"loc":["body","ratings","1004"]'),
    ({"ratings": {"1004": 5}, "k": True}, '"loc":["body","k"]'),
    ({"ratings": {"1004": 5}, "k": 3.0}, '"loc":["body","k"]'),
    ({"ratings": {"1004": 5}, "exclude_seen": 1}, '"loc":["body","exclude_seen"]'),
])
def test_api_bad_requests_are_422_naming_the_problem(client, body, fragment) -> None:
    resp = client.post("/recommend", json=body)
    assert resp.status_code == 422, resp.text
    assert fragment in resp.text


def test_api_non_json_body_is_422(client) -> None:
    resp = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) |
                     st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)
_item_key = st.one_of(st.integers(990, 1035).map(str), st.text(max_size=6))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(
    st.fixed_dictionaries({}, optional={
        "user": st.one_of(st.none(), st.dictionaries(st.sampled_from(["gender", "age", "x"]),
                                                     _scalar, max_size=3), _json),
        "ratings": st.one_of(st.dictionaries(_item_key, st.one_of(
            st.floats(), st.integers(-10, 10), st.text(max_size=3)), max_size=10), _json),
        "k": st.one_of(st.integers(-5, 40), _json),
        "exclude_seen": st.one_of(st.booleans(), _json)}),
    _json))
def test_api_fuzz_never_500(client, body) -> None:
    resp = client.post("/recommend", content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})
    assert resp.status_code in (200, 422), (body, resp.status_code, resp.text)
    if resp.status_code == 200:
        scores = [i["score"] for i in resp.json()["items"]]
        assert scores == sorted(scores, reverse=True)


def test_cli_recommend_prints_ranked_titles(exported, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    args = ["--params", str(params), "recommend", "--model", str(exported[2]),
            "--user", '{"gender": "F", "age": 25}', "--ratings", "1004:5,1010:4", "-k", "3"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].lstrip().startswith("1.") and "Movie 10" in lines[0]
    assert "(item 1004)" not in res.output
    bad = CliRunner().invoke(main, args[:-4] + ["--ratings", "424242:5"])
    assert bad.exit_code != 0 and "424242" in bad.output


def test_load_champion_from_mlflow_registry(exported, tmp_path: Path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve-test", artifact_location=str(tmp_path / "art"))
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(exported[2]), artifact_path="model")
    client = MlflowClient(uri)
    client.create_registered_model("metarec")
    # What metarec.registry records at registration: the version's folder and its digests.
    from metarec.registry import folder_manifest
    digests = {"artifact_path": "model", "artifact_sha256": json.dumps(folder_manifest(exported[2]))}
    mv = client.create_model_version("metarec", f"{run.info.artifact_uri}/model", run.info.run_id,
                                     tags=digests)
    client.set_registered_model_alias("metarec", "champion", mv.version)
    rec = Recommender.load("models:/metarec@champion", tracking_uri=uri)
    local = Recommender(exported[2])
    ratings = {1004: 5, 1010: 1}
    assert [i.to_dict() for i in rec.recommend(None, ratings, k=5)] == \
        [i.to_dict() for i in local.recommend(None, ratings, k=5)]
    np.testing.assert_array_equal(rec.item_ids, local.item_ids)


def test_recommend_with_a_ridge_export_matches_torch(tmp_path: Path) -> None:
    """The ridge learner's closed-form adaptation serves like the gradient-step graphs."""
    torch.manual_seed(1)
    features = tiny_features()
    model = build_model(features, TINY).eval()
    meta = plain_meta(learner="ridge", ridge_lambda=0.5)
    adaptation = build_learner(model, meta).adaptation()
    out = tmp_path / "export"
    export_onnx(model, adaptation, features, out,
                user_encoders=ENCODERS.to_dict()["user"], rating_range=(1.0, 5.0))
    rec = Recommender(out, max_ratings=SERVE.max_ratings)
    assert rec.info()["adaptation"] == adaptation.to_dict() and rec.info()["learner"] == "ridge"
    assert rec.info()["adaptation"]["kind"] == "ridge"
    items = rec.recommend({"gender": "M", "age": 20}, {1003: 5, 1007: 2}, k=30,
                          exclude_seen=False)
    want = adapted_scores(model, adaptation, torch.tensor([2, 2]), torch.tensor([3, 7]),
                          torch.tensor([5.0, 2.0]), torch.ones(2), torch.arange(30))
    for it in items:
        assert abs(it.score - float(want[it.item_id - 1000])) < 1e-4


def test_serving_imports_neither_torch_nor_onnx() -> None:
    import subprocess
    import sys

    code = ("import sys, metarec.serve; "
            "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_format_1_export_still_serves(exported, tmp_path: Path) -> None:
    """Exports registered before the structured adaptation entry stored a string."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(exported[2], old)
    meta = json.loads((old / "metadata.json").read_text())
    meta.update(format_version=1, adaptation="gradient_steps", learner="melu",
                inner_steps=META.inner_steps, inner_lr=META.inner_lr)
    (old / "metadata.json").write_text(json.dumps(meta))
    info = Recommender(old).info()
    assert info["learner"] == "melu" and info["adaptation"]["kind"] == "gradient"
    assert info["adaptation"]["steps"] == META.inner_steps
