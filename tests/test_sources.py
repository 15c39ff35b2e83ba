"""Every data source converts tiny fixture files to the canonical tables, and bad input names
the file and the problem."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from metarec.config import ColumnMap, CsvSource
from metarec.data.sources import read_csv_source, read_ml1m, read_ml100k, split_title
from metarec.data.tables import DataSourceError, read_tables, write_tables

CSV_CFG = CsvSource(interactions="ratings.csv", users="users.csv", items="items.csv",
                    columns=ColumnMap(user_id="uid", item_id="iid", rating="stars",
                                      timestamp="when", title="name"),
                    user_categorical=("country",), user_numeric=("age",),
                    item_categorical=("brand",), item_multi=("tags",), item_text=("blurb",))


def test_ml100k_recbole_and_grouplens_give_identical_tables(fixtures):
    rb = read_ml100k(fixtures / "ml100k_recbole")
    gl = read_ml100k(fixtures / "ml100k_grouplens")
    for key in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(rb, key), getattr(gl, key))
    assert rb.spec == gl.spec


def test_ml100k_canonical_values(fixtures):
    t = read_ml100k(fixtures / "ml100k_grouplens")
    assert t.summary() == {"interactions": 5, "users": 3, "items": 4}
    assert list(t.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert str(t.interactions.user_id.dtype) == "int64"
    items = t.items.set_index("item_id")
    assert items.loc[10, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[11, "title"] == "Misérables, Les"  # latin-1 decoded
    assert items.loc[12, "title"] == "Beta Time III: The Giving"  # "(1995) (V)" stripped
    assert items.loc[12, "year"] == 1995
    assert items.loc[13, "title"] == "unknown" and pd.isna(items.loc[13, "year"])
    assert items.loc[10, "text"] == "Alpha Story. Genres: Animation, Children's, Comedy. Year: 1995."
    assert t.users.set_index("user_id").loc[3, "zip_code"] == "T8H1N"


def test_ml1m(fixtures):
    t = read_ml1m(fixtures / "ml1m")
    assert t.summary() == {"interactions": 3, "users": 2, "items": 2}
    assert t.items.set_index("item_id").loc[11, "title"] == "Misérables, Les"
    assert t.users.set_index("user_id").loc[2, "age"] == 56


def test_csv_source(fixtures):
    t = read_csv_source(fixtures / "csv", CSV_CFG)
    assert t.summary() == {"interactions": 3, "users": 2, "items": 2}
    assert t.interactions.timestamp.tolist()[0] == 1577923200  # 2020-01-02T00:00Z
    items = t.items.set_index("item_id")
    assert items.loc[100, "tags"] == ["shoes", "red"] and items.loc[101, "tags"] == ["hats"]
    assert items.loc[100, "text"] == "Red Shoe. A red shoe."
    assert t.spec.item_multi == ("tags",) and t.spec.user_numeric == ("age",)


def test_parquet_equals_csv(fixtures, tmp_path):
    for name in ("ratings", "users", "items"):
        pd.read_csv(fixtures / "csv" / f"{name}.csv", dtype=str).to_parquet(
            tmp_path / f"{name}.parquet")
    import dataclasses
    cfg = dataclasses.replace(CSV_CFG, interactions="ratings.parquet", users="users.parquet",
                              items="items.parquet")
    a, b = read_csv_source(fixtures / "csv", CSV_CFG), read_csv_source(tmp_path, cfg)
    for key in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, key), getattr(b, key))


def test_csv_without_users_and_items(fixtures):
    import dataclasses
    cfg = dataclasses.replace(CSV_CFG, users=None, items=None)
    t = read_csv_source(fixtures / "csv", cfg)
    assert t.users.user_id.tolist() == [7, 8] and t.items.item_id.tolist() == [100, 101]


def test_tables_roundtrip(fixtures, tmp_path):
    t = read_ml100k(fixtures / "ml100k_recbole")
    write_tables(t, tmp_path / "prepared")
    back = read_tables(tmp_path / "prepared")
    for key in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(t, key), getattr(back, key))
    assert back.spec == t.spec and back.name == "ml-100k"


@pytest.mark.parametrize(("raw", "title", "year"), [
    ("Net, The (1995)", "Net, The", 1995),
    ("Land Before Time III (1995) (V)", "Land Before Time III", 1995),
    ("Double vie, La (Double Life, The) (1991)", "Double vie, La (Double Life, The)", 1991),
    ("No Year Here", "No Year Here", None),
])
def test_split_title(raw, title, year):
    assert split_title(raw) == (title, year)


# --------------------------------------------------------------------------- bad input


def _copy(fixtures, name, tmp_path):
    dest = tmp_path / name
    shutil.copytree(fixtures / name, dest)
    return dest


def _unlink(name):
    return lambda d: (d / name).unlink()


def _write(name, text):
    return lambda d: (d / name).write_text(text)


def _to_latin1(name):
    return lambda d: (d / name).write_bytes((d / name).read_text().encode("latin-1"))


# (fixture folder, how the file is broken, reader, what the error must say)
BROKEN = {
    "missing file": ("ml100k_grouplens", _unlink("u.user"), read_ml100k,
                     r"u\.user: file not found"),
    "wrong separator": ("ml1m", _write("ratings.dat", "1,10,5,978300760\n"), read_ml1m,
                        r"ratings\.dat: line 1 has 1 fields.*wrong separator"),
    "wrong encoding": ("ml100k_recbole", _to_latin1("ml-100k.item"), read_ml100k,
                       r"ml-100k\.item: not valid utf-8.*encoding"),
    "missing column": ("csv", _write("ratings.csv", "uid,iid,score,when\n7,100,4,1\n"),
                       lambda d: read_csv_source(d, CSV_CFG),
                       r"ratings\.csv: missing column\(s\) \['stars'\]"),
    "csv wrong separator": ("csv", _write("ratings.csv", "uid;iid;stars;when\n7;100;4;1\n"),
                            lambda d: read_csv_source(d, CSV_CFG), "wrong separator"),
    "non-numeric rating": ("csv", _write("ratings.csv", "uid,iid,stars,when\n7,100,five,1\n"),
                           lambda d: read_csv_source(d, CSV_CFG),
                           r"ratings\.csv: column 'rating' must hold numbers.*five"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_is_named(fixtures, tmp_path, case):
    folder, break_it, read, match = BROKEN[case]
    d = _copy(fixtures, folder, tmp_path)
    break_it(d)
    with pytest.raises(DataSourceError, match=match):
        read(d)


def test_unknown_layout(tmp_path):
    with pytest.raises(DataSourceError, match="no MovieLens-100K files"):
        read_ml100k(tmp_path)


# --------------------------------------------------------------------------- CSV source mapping


def _own_layout(folder):
    """A team's files: no timestamp, ';' users file with its own id name, tab items file."""
    folder.mkdir()
    (folder / "events.csv").write_text("uid,iid,stars\n7,101,4\n7,100,2\n8,100,5\n7,102,3\n")
    (folder / "people.csv").write_text("customer;country\n7;FR\n8;DE\n")
    (folder / "catalog.tsv").write_text("sku\tname\n100\tRed Shoe\n101\tBlue Hat\n102\tCap\n")
    return CsvSource(interactions="events.csv", users="people.csv", items="catalog.tsv",
                     users_sep=";", items_sep="\t", user_categorical=("country",),
                     columns=ColumnMap(user_id="uid", item_id="iid", rating="stars",
                                       timestamp=None, title="name", users_id="customer",
                                       items_id="sku"))


def test_csv_without_timestamps_keeps_file_order_and_says_so(tmp_path, caplog):
    import logging

    src = _own_layout(tmp_path / "own")
    with caplog.at_level(logging.INFO, logger="metarec.data.sources"):
        t = read_csv_source(tmp_path / "own", src)
    assert "no timestamp column" in caplog.text and "file's order" in caplog.text
    assert t.timestamps == "order"
    # user 7's ratings in file order (101, 100, 102), not sorted by item; timestamp = row
    seven = t.interactions[t.interactions.user_id == 7]
    assert seven.item_id.tolist() == [101, 100, 102] and seven.timestamp.tolist() == [0, 1, 3]
    assert t.users.set_index("user_id").country.to_dict() == {7: "FR", 8: "DE"}
    assert t.items.set_index("item_id").title.to_dict() == {100: "Red Shoe", 101: "Blue Hat",
                                                            102: "Cap"}
    back = read_tables(write_tables(t, tmp_path / "prepared"))
    assert back.timestamps == "order"


def test_tables_without_time_pass_validation_with_no_time_checks(tmp_path):
    """Row positions are not Unix seconds: the canonical suite skips the time range."""
    from metarec.config import TasksConfig, ValidationConfig
    from metarec.data.validation import validate_tables

    t = read_csv_source(tmp_path / "own", _own_layout(tmp_path / "own"))
    cfg = ValidationConfig(min_task_users=1, data_docs=False)
    report = validate_tables(t, cfg, TasksConfig(min_ratings=1, max_ratings=10))
    assert report.passed, report.to_text()


def test_the_timestamp_mapping_may_be_null_in_params(tmp_path):
    from metarec.config import load_config

    params = tmp_path / "params.yaml"
    params.write_text("data:\n  csv:\n    items_sep: \"\\t\"\n    columns: {timestamp: null, "
                      "items_id: sku}\n")
    csv = load_config(params).data.csv
    assert csv.columns.timestamp is None and csv.columns.items_id == "sku"
    assert csv.items_sep == "\t" and csv.users_sep is None


def test_errors_of_a_fetched_csv_name_the_users_file(tmp_path, fixtures):
    """The fetch parses a staged copy; its errors still name the file the user gave."""
    import subprocess

    from metarec.config import DataConfig
    from metarec.data.fetch import fetch

    src = _copy(fixtures, "csv", tmp_path)
    (src / "ratings.csv").write_text("uid,iid,stars,when\n7,100,4,1\n7,101,five,2\n")
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    with pytest.raises(DataSourceError) as err:
        fetch(DataConfig(dataset="csv", csv=CSV_CFG), path=src, root=tmp_path / "repo")
    message = str(err.value)
    assert message.startswith(f"{src / 'ratings.csv'}: column 'rating' must hold numbers")
    assert "['five'] at line 3" in message and ".data." not in message
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".data")]


def test_errors_in_an_archive_name_the_member(tmp_path, fixtures):
    import subprocess
    import zipfile

    from metarec.config import DataConfig
    from metarec.data.fetch import fetch

    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (fixtures / "ml100k_grouplens").iterdir():
            zf.writestr(f"ml-100k/{f.name}", "1,10,5\n" if f.name == "u.data" else f.read_bytes())
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    with pytest.raises(DataSourceError, match=rf"^{archive}:ml-100k/u\.data: line 1 has 1 "):
        fetch(DataConfig(dataset="ml-100k"), path=archive, root=tmp_path / "repo")
