"""POST /feedback, GET /users/{id} and POST /recommend with a user_id, on a real export in ONNX
Runtime and a real SQLite event store: a rating posted changes the very next recommendation,
batches are all-or-nothing and idempotent, malformed events are 422s naming the field, and the
write endpoint needs the bearer token when one is configured (none: loopback only)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from metarec.config import FeedbackConfig, ServeConfig, ValidationConfig
from metarec.serving.app import create_app
from metarec.serving.profiles import Profiles
from metarec.serving.run import BindRefused, check_bind
from tests.test_serve import SERVE, TOKEN, exported  # noqa: F401 - the export fixture

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _event(i: int, item: int, rating: float, user: int = 7001, **extra) -> dict:
    return {"event_id": f"ev-{i}", "user_id": user, "item_id": item, "rating": rating,
            "timestamp": 1_700_000_000 + i, **extra}


@pytest.fixture
def app_for(exported, tmp_path):  # noqa: F811 - the fixture imported above
    def make(cfg: ServeConfig = SERVE) -> TestClient:
        profiles = Profiles(FeedbackConfig(store_uri=f"sqlite:///{tmp_path}/feedback.db",
                                           max_batch=5), ValidationConfig())
        return TestClient(create_app(str(exported[2]), cfg, profiles=profiles))
    return make


def test_feedback_changes_the_next_recommendation(app_for):
    with app_for() as client:
        ask = {"user_id": 7001, "k": 20, "exclude_seen": False}
        before = client.post("/recommend", json=ask).json()
        assert before["profile"]["stored_ratings_used"] == 0
        posted = client.post("/feedback", headers=AUTH, json={"events": [
            _event(1, 1004, 5, user_features={"gender": "F", "age": 30}), _event(2, 1010, 1)]})
        assert posted.status_code == 200, posted.text
        assert posted.json() == {"received": 2, "added": 2, "duplicates": [], "last_seq": 2}
        after = client.post("/recommend", json=ask).json()
        assert after["profile"]["stored_ratings_used"] == 2
        # Exactly what the same ratings and attributes sent in the request give.
        explicit = client.post("/recommend", json={
            "user": {"gender": "F", "age": 30}, "ratings": {"1004": 5, "1010": 1}, "k": 20,
            "exclude_seen": False}).json()
        # (support order differs: float rounding of the in-graph solve, hence approx scores)
        assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in explicit["items"]]
        assert [i["score"] for i in after["items"]] == pytest.approx(
            [i["score"] for i in explicit["items"]], abs=1e-5)
        assert after["items"] != before["items"]
        # The request's own rating wins for an item rated in both; seen items are excluded.
        mixed = client.post("/recommend", json={"user_id": 7001, "ratings": {"1004": 1},
                                                "k": 5}).json()
        same = client.post("/recommend", json={"user": {"gender": "F", "age": 30},
                                               "ratings": {"1004": 1, "1010": 1},
                                               "k": 5}).json()
        assert [i["item_id"] for i in mixed["items"]] == [i["item_id"] for i in same["items"]]
        assert [i["score"] for i in mixed["items"]] == pytest.approx(
            [i["score"] for i in same["items"]], abs=1e-5)
        assert not {i["item_id"] for i in mixed["items"]} & {1004, 1010}
        profile = client.get("/users/7001").json()
        assert profile["features"] == {"age": 30, "gender": "F"} and profile["total"] == 2
        assert [r["item_id"] for r in profile["ratings"]] == [1010, 1004]
        assert client.get("/users/424242").json()["ratings"] == []


def test_feedback_batches_are_idempotent_and_all_or_nothing(app_for):
    with app_for() as client:
        batch = {"events": [_event(1, 1004, 5), _event(2, 1005, 4)]}
        assert client.post("/feedback", headers=AUTH, json=batch).json()["added"] == 2
        retry = client.post("/feedback", headers=AUTH, json=batch).json()
        assert retry["added"] == 0 and retry["duplicates"] == ["ev-1", "ev-2"]
        bad = {"events": [_event(3, 1006, 4), _event(4, 1007, 9)]}
        resp = client.post("/feedback", headers=AUTH, json=bad)
        assert resp.status_code == 422
        (err,) = resp.json()["detail"]
        assert err["loc"] == ["body", "events", 1, "rating"] and "outside [1, 5]" in err["msg"]
        assert client.get("/users/7001").json()["total"] == 2  # nothing of the bad batch
        too_many = {"events": [_event(10 + i, 1004, 3) for i in range(6)]}
        assert "at most 5" in client.post("/feedback", headers=AUTH,
                                          json=too_many).json()["detail"][0]["msg"]
        wrong_type = client.post("/feedback", headers=AUTH, json={"events": {"a": 1}})
        assert wrong_type.status_code == 422
        assert wrong_type.json()["detail"][0]["loc"][:2] == ["body", "events"]
        # A stored item the served model lacks is left out of the support set, and named.
        client.post("/feedback", headers=AUTH, json={"events": [_event(20, 99999, 3)]})
        note = client.post("/recommend", json={"user_id": 7001}).json()["profile"]
        assert note["unknown_items_skipped"] == [99999] and note["stored_ratings_used"] == 2


def test_write_endpoint_token_rule(app_for):
    with app_for() as client:
        event = {"events": [_event(1, 1004, 5)]}
        assert client.post("/feedback", json=event).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-at-all-0000"}
        assert client.post("/feedback", headers=wrong, json=event).status_code == 401
        assert client.post("/feedback", headers=AUTH, json=event).status_code == 200
        # Reading profiles and recommending need no token.
        assert client.get("/users/7001").status_code == 200
    # Without a configured token the write endpoint is open, and `metarec serve` then binds
    # loopback only.
    open_cfg = ServeConfig(max_ratings=8, max_k=20, token=None)
    with app_for(open_cfg) as client:
        assert client.post("/feedback", json={"events": [_event(2, 1004, 5)]}).status_code == 200
    check_bind("127.0.0.1", None)
    with pytest.raises(BindRefused, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
