"""The event store on the real databases: SQLite in WAL mode (default) and PostgreSQL
(integration): idempotent event ids, all-or-nothing batches, validation naming the field,
profiles, concurrent writers, and `metarec feedback add` on CSV and JSON lines."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from metarec.config import FeedbackConfig, ValidationConfig
from metarec.feedback.events import EventError, IntakeRules, parse_events, read_event_records
from metarec.feedback.store import EventStore, StoreError
from tests.conftest import REPO
from tests.test_scale import postgres  # noqa: F401 - the integration PostgreSQL server

RULES = IntakeRules()
NOW = 1_800_000_000.0


def _events(n: int, start: int = 0, user: int = 7, **extra):
    return [{"event_id": f"ev-{i}", "user_id": user, "item_id": 100 + i, "rating": 1 + i % 5,
             "timestamp": 1_700_000_000 + i, **extra} for i in range(start, start + n)]


def _check_store(store: EventStore) -> None:
    """The contract every backend honours (run on SQLite and on PostgreSQL)."""
    first = store.add(parse_events(_events(3), RULES, now=NOW))
    assert (first.added, first.duplicates, first.last_seq) == (3, (), 3)
    # A retried batch, plus one new event and one repeated inside the batch: only news stored.
    again = store.add(parse_events(_events(4) + _events(1, start=3), RULES, now=NOW))
    assert again.added == 1 and again.duplicates == ("ev-0", "ev-1", "ev-2", "ev-3")
    assert store.count() == 4 and store.max_seq() == 4
    # A malformed event anywhere refuses the whole batch, naming the field; nothing stored.
    bad = _events(2, start=10) + [{**_events(1, start=12)[0], "rating": "five"}]
    with pytest.raises(EventError) as err:
        store.add(parse_events(bad, RULES, now=NOW))
    assert err.value.field == "events[2].rating" and "expected a number" in str(err.value)
    assert store.count() == 4
    # A failure inside the transaction (here: a NOT NULL violation slipped past validation)
    # rolls back the events of the batch written before it.
    good = parse_events(_events(2, start=20), RULES, now=NOW)
    broken = parse_events(_events(1, start=22), RULES, now=NOW)
    object.__setattr__(broken[0], "item_id", None)
    with pytest.raises(Exception):
        store.add(good + broken)
    assert store.count() == 4 and store.max_seq() == 4
    # Profiles: newest rating per item first; re-rating an item replaces it in the profile.
    store.add(parse_events([{"event_id": "re-rate", "user_id": 7, "item_id": 101, "rating": 5,
                             "timestamp": 1_700_000_500,
                             "user_features": {"gender": "F", "age": 31}}], RULES, now=NOW))
    profile = store.user_ratings(7)
    assert [r.item_id for r in profile] == [101, 103, 102, 100]
    assert profile[0].rating == 5.0 and len(store.user_ratings(7, limit=2)) == 2
    assert store.user_features(7) == {"age": 31, "gender": "F"}
    assert store.user_ratings(8) == [] and store.user_features(8) == {}
    frame = store.events(after=2)
    # PostgreSQL's sequence skips the values of a rolled-back batch: seqs increase, maybe
    # with gaps (a watermark compares, it never counts).
    assert list(frame["event_id"]) == ["ev-2", "ev-3", "re-rate"]
    assert frame["seq"].is_monotonic_increasing and frame["user_features"].iloc[-1] == \
        '{"age":31,"gender":"F"}'
    # Concurrent writers (threads, each its own connection): every event lands once, and seq
    # order is commit order (no gaps a watermark could skip).
    errors = []

    def writer(k: int) -> None:
        try:
            for j in range(5):
                store.add(parse_events(_events(4, start=1000 + 40 * k + 4 * j, user=50 + k),
                                       RULES, now=NOW))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    seqs = list(store.events()["seq"])
    assert store.count() == 5 + 80 and len(seqs) == 85 and seqs == sorted(set(seqs))
    assert seqs[-1] == store.max_seq()


def test_sqlite_store_in_wal_mode(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path}/feedback.db")
    _check_store(store)
    with sqlite3.connect(tmp_path / "feedback.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Durable: a new store object (another process would do the same) reads it all back.
    assert EventStore(f"sqlite:///{tmp_path}/feedback.db").count() == 85


def test_store_uri_from_environment_and_bad_uri(tmp_path, monkeypatch):
    from metarec.feedback.store import store_uri

    assert store_uri(FeedbackConfig()) == "sqlite:///feedback.db"
    monkeypatch.setenv("METAREC_FEEDBACK_URI", f"sqlite:///{tmp_path}/other.db")
    assert EventStore.from_config(FeedbackConfig()).describe() == f"sqlite {tmp_path}/other.db"
    with pytest.raises(StoreError, match="sqlite:///FILE or postgresql://"):
        EventStore("mysql://x/y")


@pytest.mark.parametrize("event, field, words", [
    ({"user_id": 1, "item_id": 2, "rating": 4}, "events[0].event_id", "required"),
    ({"event_id": "a", "user_id": "1", "item_id": 2, "rating": 4}, "events[0].user_id",
     "expected an integer"),
    ({"event_id": "a", "user_id": True, "item_id": 2, "rating": 4}, "events[0].user_id",
     "expected an integer"),
    ({"event_id": "a", "user_id": 1, "item_id": 2**64, "rating": 4}, "events[0].item_id",
     "int64"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 6}, "events[0].rating",
     "outside [1, 5]"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": float("nan")}, "events[0].rating",
     "finite"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4, "timestamp": 12},
     "events[0].timestamp", "before"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4, "timestamp": int(NOW) + 3600},
     "events[0].timestamp", "future"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4, "timestamp": "yesterday"},
     "events[0].timestamp", "ISO 8601"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4, "user_features": [1]},
     "events[0].user_features", "object"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4,
      "user_features": {"age": {"nested": 1}}}, "events[0].user_features.age", "string"),
    ({"event_id": "a", "user_id": 1, "item_id": 2, "rating": 4, "stars": 4},
     "events[0].stars", "unknown field"),
    ({"event_id": " a", "user_id": 1, "item_id": 2, "rating": 4}, "events[0].event_id",
     "blanks"),
])
def test_malformed_events_name_the_field(event, field, words):
    with pytest.raises(EventError) as err:
        parse_events([event], RULES, now=NOW)
    assert err.value.field == field and words in err.value.message


def test_batch_limits_and_defaults():
    with pytest.raises(EventError, match="empty batch"):
        parse_events([], RULES)
    with pytest.raises(EventError, match="at most 2"):
        parse_events(_events(3), RULES, max_batch=2)
    (event,) = parse_events([{"event_id": "a", "user_id": 1, "item_id": 2, "rating": 3.5,
                              "timestamp": "2023-11-14T22:13:20Z"}], RULES, now=NOW)
    assert event.timestamp == 1_700_000_000
    (event,) = parse_events([{"event_id": "b", "user_id": 1, "item_id": 2, "rating": 1}],
                            RULES, now=NOW)
    assert event.timestamp == int(NOW)  # no time given: the receiving clock
    implicit = IntakeRules.from_config(ValidationConfig(implicit=True), FeedbackConfig())
    with pytest.raises(EventError, match="not 0 or 1"):
        parse_events([{"event_id": "c", "user_id": 1, "item_id": 2, "rating": 3}], implicit)


def test_event_files_csv_and_jsonl():
    text = ("event_id,user_id,item_id,rating,timestamp,user_features\n"
            'a,1,2,4,1700000000,"{""age"": 30}"\n' "b,1,3,5,,\n")
    events = parse_events(read_event_records(text, "csv"), RULES, now=NOW)
    assert events[0].user_features == (("age", 30),) and events[1].timestamp == int(NOW)
    with pytest.raises(EventError, match=r"rating: expected a number"):
        parse_events(read_event_records("event_id,user_id,item_id,rating\na,1,2,x\n", "csv"),
                     RULES)
    with pytest.raises(EventError, match="unknown column"):
        read_event_records("event_id,user,item_id,rating\n", "csv")
    with pytest.raises(EventError, match="line 2: not valid JSON"):
        read_event_records('{"event_id": "a"}\n{oops\n', "jsonl")


def test_cli_feedback_add_and_show(tmp_path):
    env_cmd = [sys.executable, "-m", "metarec.cli"]
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in _events(3)) + "\n")
    bad = _events(2, start=5) + [{"event_id": "x", "user_id": 7, "item_id": 1, "rating": 9}]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(e) for e in bad) + "\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*env_cmd, *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)})

    ok = run("feedback", "add", "events.jsonl")
    assert ok.returncode == 0, ok.stderr
    assert "3 of 3 events stored in sqlite feedback.db" in ok.stdout
    assert "0 of 3 events stored" in run("feedback", "add", "events.jsonl").stdout
    refused = run("feedback", "add", "bad.jsonl")
    assert refused.returncode == 1
    assert "bad.jsonl[2].rating: 9 is outside [1, 5]" in refused.stderr
    shown = json.loads(run("feedback", "show", "7", "--json").stdout)
    assert [r["item_id"] for r in shown["ratings"]] == [102, 101, 100]


@pytest.mark.integration
def test_postgres_store(request):
    pytest.importorskip("psycopg2")
    url = request.getfixturevalue("postgres")
    store = EventStore(f"{url}/postgres")
    _check_store(store)
    # The same table from another connection; creating the schema again is harmless.
    assert EventStore(f"{url.replace('postgresql://', 'postgresql+psycopg2://')}/postgres"
                      ).count() == 85
    with pytest.raises(StoreError, match="cannot connect"):
        EventStore("postgresql://nobody@127.0.0.1:1/none")
