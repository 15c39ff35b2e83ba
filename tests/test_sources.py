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
