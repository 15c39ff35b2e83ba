"""Data contracts (metarec.data.validation): valid data passes, each kind of bad data is rejected
with a message naming the problem, and the CLI reports and exits non-zero."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from metarec.config import Config, CsvSource, TasksConfig, ValidationConfig
from metarec.data.tables import (CanonicalTables, DataSourceError, FeatureSpec, read_tables,
                                 write_tables)
from metarec.data.validation import (DataValidationError, ValidationReport, load_raw_files,
                                     raise_if_failed, validate_frames, validate_tables)

NOW = 1_800_000_000.0  # 2027-01-15: fixed "present" so the tests do not depend on the clock
CFG = ValidationConfig(min_task_users=20, data_docs=False)
SPEC = FeatureSpec(user_categorical=("gender",), user_numeric=("age",))
N_USERS, N_ITEMS = 25, 15


def canonical() -> CanonicalTables:
    """25 users who each rated all 15 items (enough for the 13..100 task protocol)."""
    rng = np.random.default_rng(0)
    users, items = np.meshgrid(np.arange(1, N_USERS + 1), np.arange(1, N_ITEMS + 1), indexing="ij")
    inter = pd.DataFrame({
        "user_id": users.ravel().astype("int64"), "item_id": items.ravel().astype("int64"),
        "rating": rng.integers(1, 6, users.size).astype("float64"),
        "timestamp": (1_000_000_000 + np.arange(users.size) * 60).astype("int64")})
    user_fr = pd.DataFrame({"user_id": np.arange(1, N_USERS + 1, dtype="int64"),
                            "gender": ["F", "M"] * 12 + ["F"], "age": 30.0})
    titles = [f"Movie {i} (1995)" for i in range(1, N_ITEMS + 1)]
    item_fr = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1, dtype="int64"),
                            "title": titles, "text": [f"{t}. Drama." for t in titles]})
    return CanonicalTables(inter, user_fr, item_fr, SPEC, "tiny")


def raw() -> dict[str, pd.DataFrame]:
    """The same data as a CSV would give it: every cell a string."""
    t = canonical()
    return {"interactions": t.interactions.astype(str).astype(object),
            "users": t.users.astype(str).astype(object),
            "items": t.items.drop(columns="text").astype(str).astype(object)}


def run(frames: dict[str, pd.DataFrame], cfg: ValidationConfig = CFG, **kw) -> ValidationReport:
    return validate_frames(frames["interactions"], frames.get("users"), frames.get("items"),
                           cfg, SPEC, now=NOW, **kw)


def _set(table: str, row: int, col: str, value):
    def mutate(f):
        f[table].loc[row, col] = value
    return mutate


def _dup(f):
    f["interactions"] = pd.concat([f["interactions"], f["interactions"].iloc[[7]]])


def _empty(f):
    f["interactions"] = f["interactions"].iloc[:0]


def _drop(table, col):
    def mutate(f):
        f[table] = f[table].drop(columns=col)
    return mutate


def _rename(f):
    f["interactions"] = f["interactions"].rename(columns={"timestamp": "time"})


def _few_users(f):
    f["interactions"] = f["interactions"][f["interactions"].user_id.astype(int) <= 5]


def _dup_user(f):
    f["users"].loc[1, "user_id"] = "1"


# (case id, mutation, table, expectation, offending value in examples, words in the message)
BAD = [
    ("rating-text", _set("interactions", 3, "rating", "five"), "interactions",
     "rating is a number", "five", "not numbers"),
    ("rating-0", _set("interactions", 3, "rating", "0"), "interactions", "rating in range",
     "0", "outside [1, 5]"),
    ("rating-6", _set("interactions", 3, "rating", 6), "interactions", "rating in range", 6,
     "outside [1, 5]"),
    ("rating-nan", _set("interactions", 3, "rating", np.nan), "interactions", "not null",
     None, "null/missing value(s) in 'rating'"),
    ("null-user-id", _set("interactions", 4, "user_id", None), "interactions", "not null",
     None, "in 'user_id'"),
    ("negative-timestamp", _set("interactions", 5, "timestamp", "-86400"), "interactions",
     "timestamp after start", "-86400", "before 1990-01-01"),
    ("future-timestamp", _set("interactions", 5, "timestamp", str(int(NOW) + 86400)),
     "interactions", "timestamp not in future", str(int(NOW) + 86400), "in the future"),
    ("timestamp-garbage", _set("interactions", 5, "timestamp", "last tuesday"), "interactions",
     "timestamp is a time", "last tuesday", "neither Unix seconds nor dates"),
    ("duplicate-rows", _dup, "interactions", "no duplicate (user, item, timestamp)", None,
     "share (user_id, item_id, timestamp)"),
    ("orphan-item", _set("interactions", 6, "item_id", "999"), "interactions", "item_id known",
     "999", "missing from the items table"),
    ("orphan-user", _set("interactions", 6, "user_id", "777"), "interactions", "user_id known",
     "777", "missing from the users table"),
    ("empty-interactions", _empty, "interactions", "not empty", None, "table is empty"),
    ("missing-column", _drop("interactions", "rating"), "interactions", "column exists", None,
     "required column 'rating'"),
    ("renamed-column", _rename, "interactions", "column exists", None,
     "required column 'timestamp' is missing; columns present: ['user_id', 'item_id', "
     "'rating', 'time']"),
    ("whitespace-id", _set("interactions", 8, "user_id", " 2 "), "interactions",
     "user id trimmed", " 2 ", "leading/trailing whitespace"),
    ("int64-overflow-id", _set("interactions", 8, "item_id", "92233720368547758070"),
     "interactions", "item id int64", "92233720368547758070", "overflow int64"),
    ("non-integer-id", _set("interactions", 8, "item_id", "1.5"), "interactions",
     "item id integer", "1.5", "not integers"),
    ("mojibake-title", _set("items", 2, "title", "AmÃ©lie (2001)"), "items", "title encoding",
     "AmÃ©lie (2001)", "mis-encoded"),
    ("replacement-char-title", _set("items", 2, "title", "Am\ufffdlie (2001)"), "items",
     "title encoding", "Am\ufffdlie (2001)", "U+FFFD"),
    ("blank-title", _set("items", 2, "title", "   "), "items", "title nonempty", "   ",
     "empty or blank"),
    ("items-without-title", _drop("items", "title"), "items", "column exists", None,
     "required column 'title'"),
    ("duplicate-user-ids", _dup_user, "users", "unique id", "1", "share a user_id"),
    ("numeric-feature-text", _set("users", 3, "age", "old"), "users", "numeric feature", "old",
     "'age' are not numbers"),
    ("too-few-task-users", _few_users, "interactions", "enough task users", None,
     "only 5 of 5 users have 13..100 interactions"),
]


def test_valid_raw_and_canonical_data_pass():
    report = run(raw())
    assert report.passed, report.to_text()
    t = canonical()
    report = validate_tables(t, CFG, TasksConfig(), now=NOW)
    assert report.passed, report.to_text()
    assert report.rows == {"interactions": 375, "users": 25, "items": 15}


@pytest.mark.parametrize("case,mutate,table,expectation,example,words", BAD,
                         ids=[b[0] for b in BAD])
def test_bad_data_is_rejected_naming_the_problem(case, mutate, table, expectation, example,
                                                 words):
    frames = raw()
    mutate(frames)
    report = run(frames)
    assert not report.passed
    hits = [f for f in report.failures if f.table == table and f.expectation == expectation]
    assert hits, f"{case}: expected [{table}] {expectation}, got:\n{report.to_text()}"
    assert words in hits[0].message, hits[0].message
    if example is not None:
        assert example in hits[0].examples, hits[0].examples
    with pytest.raises(DataValidationError, match=expectation.split(" (")[0]):
        raise_if_failed(report)


def test_at_least_15_distinct_kinds_of_bad_data():
    assert len({b[0] for b in BAD}) >= 15


def test_counts_and_examples_are_exact():
    frames = raw()
    for row in (1, 2, 3):
        frames["interactions"].loc[row, "rating"] = "7"
    report = run(frames)
    (fail,) = report.failures
    assert (fail.column, fail.failing_count, fail.examples) == ("rating", 3, ["7"])


def test_null_ids_are_reported_by_row_counted_from_1():
    frames = raw()
    frames["interactions"].loc[[4, 9], "item_id"] = None
    (fail,) = run(frames).failures
    assert (fail.expectation, fail.failing_count, fail.examples) == ("not null", 2,
                                                                     ["row 5", "row 10"])
    assert fail.where == ["row 5", "row 10"] and fail.file is None


def test_unsigned_ids_beyond_int64_in_parquet(tmp_path):
    frames = raw()
    inter = canonical().interactions.assign(item_id=lambda f: f.item_id.astype("uint64"))
    inter.loc[0, "item_id"] = np.uint64(2**63 + 5)
    inter.to_parquet(tmp_path / "inter.parquet")
    frames["interactions"] = load_raw_files(tmp_path / "inter.parquet")[0]
    names = {f.expectation: f for f in run(frames).failures}
    assert names["item id int64"].examples == [2**63 + 5]


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "inter.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataSourceError, match="inter.parquet: cannot be read as parquet.*"
                       "looks like text"):
        load_raw_files(bad)
    (tmp_path / "inter.xlsx").write_text("")
    with pytest.raises(DataSourceError, match="unsupported file type '.xlsx'"):
        load_raw_files(tmp_path / "inter.xlsx")
    with pytest.raises(DataSourceError, match="missing.csv: file not found"):
        load_raw_files(tmp_path / "missing.csv")


def test_not_a_dataframe_is_a_clear_error():
    with pytest.raises(TypeError, match="interactions must be a pandas DataFrame, got list"):
        validate_frames([1, 2, 3])


def test_canonical_tables_need_canonical_dtypes():
    t = canonical()
    t.interactions["user_id"] = t.interactions["user_id"].astype(str)
    report = validate_tables(t, CFG, TasksConfig(), now=NOW)
    dtype = [f for f in report.failures if f.expectation == "dtype"]
    assert [f.column for f in dtype] == ["user_id"]
    assert "expected int64" in dtype[0].message


def test_implicit_labels_and_duplicates_policy():
    implicit = replace(CFG, implicit=True)
    frames = raw()
    frames["interactions"]["rating"] = "1"
    assert run(frames, implicit).passed
    frames["interactions"].loc[0, "rating"] = "2"
    (fail,) = run(frames, implicit).failures
    assert fail.expectation == "label in {0, 1}" and fail.examples == ["2"]
    frames = raw()
    _dup(frames)
    assert run(frames, replace(CFG, duplicates="allow")).passed


def test_task_protocol_bounds_come_from_tasks_config():
    t = canonical()  # every user has 15 interactions: none is eligible for 20..100
    cfg = Config(validation=CFG, tasks=TasksConfig(min_ratings=20, max_ratings=100))
    (fail,) = validate_tables(t, cfg.validation, cfg.tasks, now=NOW).failures
    assert fail.expectation == "enough task users" and "20..100" in fail.message


def test_report_serialises(tmp_path):
    frames = raw()
    frames["interactions"].loc[0, "rating"] = "five"
    report = run(frames, artifact_dir=tmp_path)
    payload = json.loads(report.to_json())
    assert payload["passed"] is False
    assert payload["failures"][0]["examples"] == ["five"]
    assert "| interactions | rating is a number | rating | 1 | five |" in report.to_markdown()
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(report.to_json())
    gx = json.loads((tmp_path / "gx_result.json").read_text())
    assert gx["interactions"]["success"] is False
    assert set(gx) == {"interactions", "users", "items", "interactions_per_user"}


def _write_csvs(folder: Path, frames: dict[str, pd.DataFrame]) -> dict[str, Path]:
    paths = {}
    for name, frame in frames.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def test_load_raw_files_maps_columns_and_keeps_strings(tmp_path):
    frames = raw()
    frames["interactions"] = frames["interactions"].rename(columns={"user_id": "uid"})
    frames["interactions"].loc[0, "item_id"] = " 3"
    paths = _write_csvs(tmp_path, frames)
    src = CsvSource(columns=replace(CsvSource().columns, user_id="uid"))
    inter, users, items = load_raw_files(paths["interactions"], None, None, src)
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter.loc[0, "item_id"] == " 3" and users is None and items is None


def test_mixed_encodings_in_a_csv_file_are_reported(tmp_path):
    paths = _write_csvs(tmp_path, raw())
    data = paths["items"].read_bytes().replace(b"Movie 4 ", "Café 4 ".encode("latin-1"))
    paths["items"].write_bytes(data)  # a UTF-8 file with one Latin-1 title
    frames = load_raw_files(paths["interactions"], paths["users"], paths["items"])
    report = validate_frames(*frames, CFG, SPEC, now=NOW)
    (fail,) = report.failures
    assert fail.expectation == "title encoding" and fail.examples == ["Caf\ufffd 4 (1995)"]


def test_nothing_downstream_is_written_after_a_failed_validation(tmp_path):
    prepared = write_tables(canonical(), tmp_path / "prepared")
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}
    bad = canonical()
    bad.interactions.loc[0, "rating"] = 9.0
    with pytest.raises(DataValidationError, match="outside"):
        write_tables(raise_if_failed(validate_tables(bad, CFG, TasksConfig(), now=NOW))
                     and bad, prepared)
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before
    assert read_tables(prepared).interactions.rating.max() <= 5.0


def _cli(tmp_path, *args):
    from metarec.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("validation: {min_task_users: 20, data_docs: true}\n"
                      f"data: {{prepared_dir: {tmp_path / 'prepared'}}}\n")
    return CliRunner().invoke(main, ["--params", str(params), "data", "validate", *args])


def test_cli_validates_files_and_prepared_tables(tmp_path):
    paths = _write_csvs(tmp_path, raw())
    out = tmp_path / "val"
    res = _cli(tmp_path, "--interactions", str(paths["interactions"]), "--users",
               str(paths["users"]), "--items", str(paths["items"]), "--artifacts", str(out))
    assert res.exit_code == 0, res.output
    assert "validation passed" in res.output
    assert (out / "gx_result.json").exists() and (out / "data_docs" / "index.html").exists()

    write_tables(canonical(), tmp_path / "prepared")
    res = _cli(tmp_path, "--json", "--artifacts", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True


def test_cli_fails_on_bad_files(tmp_path):
    frames = raw()
    frames["interactions"].loc[2, "rating"] = "five"
    paths = _write_csvs(tmp_path, frames)
    res = _cli(tmp_path, "--interactions", str(paths["interactions"]), "--artifacts",
               str(tmp_path / "val"))
    assert res.exit_code == 1
    assert "[interactions] rating is a number (rating): 1 failing" in res.output
    assert "five" in res.output
    res = _cli(tmp_path, "--interactions", str(paths["interactions"]), "--json",
               "--artifacts", str(tmp_path / "val"))
    assert res.exit_code == 1
    assert json.loads(res.stdout)["failures"][0]["examples"] == ["five"]
