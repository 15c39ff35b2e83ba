"""The validator never crashes: property-based tests throw tables with nulls of every kind,
empty strings, wrong types, huge numbers, bytes that are not UTF-8, lists, dates and text into
every column (as frames, and as CSV files with any separator and encoding), and every outcome
must be a report (passed or failed, each failure named) or a DataSourceError naming the file,
never an exception from pandas or GX, and never a check that "could not be evaluated".
Then the wording contracts on real files: 1-based lines, the user's path, and the hints for
wrong separators, encodings and binary files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.config import ColumnMap, CsvSource, ValidationConfig
from metarec.data.tables import DataSourceError, FeatureSpec
from metarec.data.validation import (ValidationReport, plan_batches, validate_files,
                                     validate_frames)

NOW = 1_800_000_000.0
CFG = ValidationConfig(min_task_users=1, data_docs=False)
SPEC = FeatureSpec(user_categorical=("gender",), user_numeric=("age",))
NOT_EVALUATED = "could not be evaluated"

CELLS = st.one_of(
    st.none(), st.just(np.nan), st.just(pd.NA), st.just(pd.NaT), st.just(""), st.just("  "),
    st.text(max_size=10), st.integers(-(10**25), 10**25), st.just(10**4000), st.just("9" * 5000),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.binary(max_size=6), st.lists(st.integers(0, 5), max_size=3),
    st.sampled_from(["1", " 2 ", "+-5", "٣", "1e999", "nan", "inf", "2020-01-02", "0x1F",
                     "99999-01-01", "1_000", "Ã©té", "\ufffd", "3.0", "-86400",
                     '"quoted, comma"', 'say "hi"', '"two\nlines"', '""', "\r"]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.just(1_000_000_000), st.integers(1, 5))


@st.composite
def tables(draw, columns: tuple[str, ...]) -> pd.DataFrame:
    n = draw(st.integers(0, 6))
    kept = [c for c in columns if draw(st.booleans()) or draw(st.booleans())]
    return pd.DataFrame({c: pd.Series([draw(CELLS) for _ in range(n)], dtype=object)
                         for c in kept}, index=range(n))


FRAMES = st.tuples(tables(("user_id", "item_id", "rating", "timestamp")),
                   st.none() | tables(("user_id", "age", "gender")),
                   st.none() | tables(("item_id", "title")))


def _not_evaluated(report: ValidationReport) -> list[str]:
    return [f"[{f.table}] {f.expectation}: {f.message}" for f in report.failures
            if NOT_EVALUATED in f.message]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAMES, st.booleans(), st.booleans())
def test_every_check_is_derived_from_any_cells(frames, canonical, timed):
    """The pandas half (derived check columns) on many tables: nothing raises and no check is
    left unevaluated; derived flags hold only True, False or None."""
    batches, _ = plan_batches(*frames, CFG, SPEC, min_ratings=1, max_ratings=100,
                              canonical=canonical, columns=ColumnMap(), now=NOW, timed=timed)
    problems = [p for b in batches for p in b.problems if NOT_EVALUATED in p[2]]
    assert not problems, problems
    for b in batches:
        for name, col in b.derived.items():
            assert len(col) == len(b.raw), name
            if name.endswith(("_trimmed", "_integer", "_int64", "_number", "_nonempty",
                              "_encoding", "_known")):
                assert set(col.map(repr)) <= {"True", "False", "None"}, (name, col.tolist())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAMES, st.booleans())
def test_whole_validation_of_any_cells_is_a_report(frames, canonical):
    """Real GX suites on odd tables: a report whose failures are all named and evaluated, and
    which serialises."""
    report = validate_frames(*frames, CFG, SPEC, min_ratings=1, canonical=canonical, now=NOW)
    assert isinstance(report, ValidationReport)
    assert not _not_evaluated(report), _not_evaluated(report)
    assert report.passed == (not report.failures)
    assert all(f.expectation and f.message for f in report.failures)
    json.loads(json.dumps(report.to_dict(), default=str))
    assert report.to_text().startswith("validation ")


SEPARATORS = st.sampled_from([",", ";", "\t", "|", "::"])
READ_SEPARATORS = st.sampled_from([None, None, None, ",", ";", "\t"])  # None: the written one
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16"])


def _cell_text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return "" if v is None or v is pd.NA or v is pd.NaT or v != v else str(v)[:50]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(("user_id", "item_id", "rating", "timestamp")), SEPARATORS, READ_SEPARATORS,
       ENCODINGS, st.none() | st.none() | st.binary(max_size=20))
def test_any_csv_file_gives_a_report_or_a_named_error(tmp_path_factory, frame, sep, read_sep,
                                                      encoding, junk):
    """Files written with one separator and encoding, read with another, maybe with junk bytes:
    a report, or a DataSourceError that names the file."""
    path = tmp_path_factory.mktemp("props") / "ratings.csv"
    rows = [sep.join(map(str, frame.columns))] + [
        sep.join(_cell_text(v) for v in row) for row in frame.itertuples(index=False)]
    data = "\n".join(rows).encode(encoding, errors="replace") + (junk or b"")
    path.write_bytes(data)
    try:
        report = validate_files(path, csv_cfg=CsvSource(sep=read_sep or sep), cfg=CFG,
                                min_ratings=1, now=NOW)
    except DataSourceError as exc:
        assert str(path) in str(exc)
        return
    assert not _not_evaluated(report), _not_evaluated(report)
    n_lines = len(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))  # \r too
    for f in report.failures:
        assert f.file == str(path)
        for w in f.where:
            assert w.startswith("line ") and 2 <= int(w.split()[1]) <= n_lines, f


# --------------------------------------------------------------------------- wording on files


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


HEADER = "user_id,item_id,rating,timestamp\n"


def test_lines_are_the_files_own_and_the_path_is_the_users(tmp_path):
    # line 1 header, 2-3 data, 4 blank, 5 bad rating, 6 data
    inter = _write(tmp_path / "my ratings.csv", HEADER + "1,1,5,1000000000\n1,2,4,1000000060\n"
                   "\n1,3,five,1000000120\n2,1,3,1000000180\n")
    # an item title spanning lines 3-4 (quoted), then item 3 with an empty title on line 5
    items = _write(tmp_path / "items.csv", 'item_id,title\n1,Heat\n2,"Two\nlines"\n3,\n')
    report = validate_files(inter, None, items, cfg=CFG, min_ratings=1, now=NOW)
    by = {f.expectation: f for f in report.failures}
    rating = by["rating is a number"]
    assert rating.where == ["line 5"] and rating.file == str(inter) and rating.examples == ["five"]
    null_title = by["not null"]
    assert null_title.table == "items" and null_title.where == ["line 5"]
    text = report.to_text()
    assert f"at line 5 of {inter}" in text and "header being line 1" in text


def test_empty_title_is_a_named_failure_not_a_crash(tmp_path):
    """The reported crash: `TypeError: bad operand type for unary ~` on an empty title."""
    inter = _write(tmp_path / "i.csv", HEADER + "1,1,5,1000000000\n")
    items = _write(tmp_path / "it.csv", "item_id,title\n1,\n")
    report = validate_files(inter, None, items, cfg=CFG, min_ratings=1, now=NOW)
    (fail,) = [f for f in report.failures if f.table == "items"]
    assert (fail.expectation, fail.column, fail.where) == ("not null", "title", ["line 2"])
    frames = {"items": pd.DataFrame({"item_id": ["1", "2"], "title": [None, np.nan]})}
    report = validate_frames(pd.DataFrame({"user_id": ["1"], "item_id": ["1"], "rating": ["5"],
                                           "timestamp": ["1000000000"]}), None, frames["items"],
                             CFG, min_ratings=1, now=NOW)
    assert [f.where for f in report.failures if f.table == "items"] == [["row 1", "row 2"]]


@pytest.mark.parametrize("sep,content,found", [
    (",", "user_id;item_id;rating;timestamp\n1;1;5;1000000000\n", "';'"),
    (",", "user_id\titem_id\trating\ttimestamp\n1\t1\t5\t1000000000\n", "'\\t'"),
    ("\t", "user_id,item_id,rating,timestamp\n1,1,5,1000000000\n", "','"),
])
def test_wrong_separator_gets_a_hint(tmp_path, sep, content, found):
    inter = _write(tmp_path / "ratings.csv", content)
    report = validate_files(inter, csv_cfg=CsvSource(sep=sep), cfg=CFG, min_ratings=1, now=NOW)
    missing = [f for f in report.failures if f.expectation == "column exists"]
    assert len(missing) == 4
    assert "wrong separator?" in missing[0].message and found in missing[0].message
    assert [h for h in report.hints if h.startswith(f"{inter}: wrong separator?")]


def test_bytes_invalid_in_the_encoding_get_a_hint_with_the_line(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,title\n1,Heat\n2,".encode()
                   + "Amélie\n".encode("latin-1"))
    inter = _write(tmp_path / "i.csv", HEADER + "1,1,5,1000000000\n1,2,5,1000000000\n")
    report = validate_files(inter, None, items, cfg=CFG, min_ratings=1, now=NOW)
    (fail,) = [f for f in report.failures if f.table == "items"]
    assert fail.expectation == "title encoding" and fail.where == ["line 3"]
    (hint,) = report.hints
    assert hint.startswith(f"{items}: 1 line(s) hold bytes that are not valid utf-8 (first: "
                           "line 3, byte 0xe9") and "latin-1" in hint


@pytest.mark.parametrize("content,words", [
    (b"PAR1\x15\x04\x15\x00", "this is a Parquet file, not CSV text; give it a .parquet name"),
    (b"PK\x03\x04\x14\x00", "zip archive"),
    (b"\x1f\x8b\x08\x00", "gzip-compressed"),
    (b"user_id,item\x00_id\n", "binary data, not CSV text (NUL byte at offset 12)"),
    ("user_id,item_id\n1,2\n".encode("utf-16"), "looks like UTF-16"),
])
def test_binary_files_are_named_errors(tmp_path, content, words):
    path = _write(tmp_path / "ratings.csv", content)
    with pytest.raises(DataSourceError) as err:
        validate_files(path, cfg=CFG, now=NOW)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


def test_parquet_rows_are_counted_from_1(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 1], "rating": [5.0, 9.0, 4.0],
                          "timestamp": [1_000_000_000] * 3})
    frame.to_parquet(tmp_path / "r.parquet")
    report = validate_files(tmp_path / "r.parquet", cfg=CFG, min_ratings=1, now=NOW)
    (fail,) = [f for f in report.failures if f.expectation == "rating in range"]
    assert fail.where == ["row 2"] and fail.file == str(tmp_path / "r.parquet")


def test_files_without_timestamps_skip_time_checks(tmp_path):
    inter = _write(tmp_path / "r.csv", "u,i,r\n1,1,5\n1,2,4\n1,1,3\n")
    src = CsvSource(columns=ColumnMap(user_id="u", item_id="i", rating="r", timestamp=None))
    report = validate_files(inter, csv_cfg=src, cfg=CFG, min_ratings=1, now=NOW)
    assert [f.expectation for f in report.failures] == ["no duplicate (user, item)"]
    assert "without timestamps" in report.failures[0].message
    assert report.failures[0].where == ["line 2", "line 4"]
