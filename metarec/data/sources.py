"""Data sources: raw files on disk -> :class:`~metarec.data.tables.CanonicalTables`.

Supported raw layouts (each lives in its own folder under the DVC-tracked data directory):

- ``ml-100k``: MovieLens-100K, either as RecBole atomic files (``ml-100k.inter``, ``.user``,
  ``.item``; shipped inside the PyPI wheel recbole==1.2.1, the offline default) or in the
  GroupLens layout (``u.data``, ``u.user``, ``u.item``). Both give identical canonical tables.
- ``ml-1m``: MovieLens-1M in the GroupLens layout (``ratings.dat``, ``users.dat``,
  ``movies.dat``; ``::``-separated, latin-1).
- ``csv``: a team's own CSV/Parquet files, mapped to canonical columns by ``data.csv`` in
  params.yaml: a separator per file, the users/items files' own id column names, and an
  optional timestamp (without one, each user's ratings keep the file's order).

Every reader raises :class:`DataSourceError` naming the file and the problem (missing file,
wrong separator, missing column, undecodable bytes, values of the wrong type).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from metarec.config import CsvSource, DataConfig
from metarec.data.files import TableFile, file_sep, id_columns, read_table
from metarec.data.tables import CanonicalTables, DataSourceError, FeatureSpec

log = logging.getLogger(__name__)

# GroupLens genre order (u.genre); canonical genre lists keep this order.
ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western")
MOVIELENS_SPEC = FeatureSpec(user_categorical=("gender", "occupation", "zip_code"),
                             user_numeric=("age",), item_numeric=("year",),
                             item_multi=("genres",))
ML100K_RECBOLE = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
ML100K_GROUPLENS = ("u.data", "u.user", "u.item")
ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
# "Title (1995)", "Title (1995) (V)": the first "(YYYY)" ends the title.
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)(\s*\([^)]*\))*\s*$")


# --------------------------------------------------------------------------- helpers


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataSourceError(f"{path}: file not found")
    return path


def _read_delimited(path: Path, sep: str, names: list[str], encoding: str,
                    skip_header: bool = False) -> pd.DataFrame:
    """Read a separator-delimited text file as strings, checking the field count per line."""
    _require(path)
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path}: not valid {encoding} text ({exc.reason} at byte "
                              f"{exc.start}); wrong encoding?") from None
    lines = text.splitlines()
    if skip_header:
        lines = lines[1:]
    rows = [line.split(sep) for line in lines if line.strip()]
    if not rows:
        raise DataSourceError(f"{path}: no data rows")
    bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
    if bad:
        i = bad[0]
        raise DataSourceError(
            f"{path}: line {i + 1 + skip_header} has {len(rows[i])} fields separated by "
            f"{sep!r}, expected {len(names)} ({', '.join(names)}); wrong separator or a "
            f"malformed line ({len(bad)} such lines)")
    return pd.DataFrame(rows, columns=names, dtype=object)


Where = Callable[[Iterable[int]], list[str]]  # 0-based rows -> "line 4" (TableFile.where)


def _bad_values(frame: pd.DataFrame, column: str, bad: pd.Series, where: Where | None) -> str:
    rows = np.flatnonzero(bad.to_numpy())[:3]
    examples = frame[column].iloc[rows].tolist()
    at = f" at {', '.join(where(rows))}" if where is not None else ""
    return f"{int(bad.sum())} values do not, e.g. {examples}{at}"


def _to_int(frame: pd.DataFrame, column: str, path: Path, where: Where | None = None
            ) -> pd.Series:
    values = pd.to_numeric(frame[column].astype(str).str.strip(), errors="coerce")
    bad = values.isna() | (values != np.floor(values)) | (values.abs() >= 2.0**63)
    if bad.any():
        raise DataSourceError(f"{path}: column '{column}' must hold integers; "
                              f"{_bad_values(frame, column, bad, where)}")
    return values.astype("int64")


def _to_float(frame: pd.DataFrame, column: str, path: Path, where: Where | None = None
              ) -> pd.Series:
    values = pd.to_numeric(frame[column].astype(str).str.strip(), errors="coerce")
    bad = values.isna()
    if bad.any():
        raise DataSourceError(f"{path}: column '{column}' must hold numbers; "
                              f"{_bad_values(frame, column, bad, where)}")
    return values.astype("float64")


def split_title(raw: str) -> tuple[str, int | None]:
    """'Net, The (1995)' -> ('Net, The', 1995); a title without a year keeps its text."""
    match = _TITLE_YEAR.match(raw.strip())
    if match:
        return match.group("title"), int(match.group("year"))
    return raw.strip(), None


def item_text(title: str, genres: Iterable[str], year: int | None) -> str:
    """The text the language model embeds for an item: title, genres and year."""
    parts = [title]
    genres = [g for g in genres if g and g != "unknown"]
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if year is not None and not pd.isna(year):
        parts.append(f"Year: {int(year)}")
    return ". ".join(parts) + "."


def _movie_items(ids: pd.Series, titles: list[str], years: list[int | None],
                 genres: list[list[str]]) -> pd.DataFrame:
    order = {g: i for i, g in enumerate(ML_GENRES)}
    genres = [sorted(set(g), key=lambda x: (order.get(x, len(order)), x)) for g in genres]
    items = pd.DataFrame({"item_id": ids.astype("int64").to_numpy(), "title": titles,
                          "year": pd.array(years, dtype="Int64"), "genres": genres})
    items["text"] = [item_text(t, g, y) for t, g, y in zip(items.title, items.genres, years)]
    items["title"] = items["title"].astype("str")
    items["text"] = items["text"].astype("str")
    return items[["item_id", "title", "text", "year", "genres"]].sort_values(
        "item_id", kind="stable").reset_index(drop=True)


def _interactions(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": _to_int(frame, "user_id", path),
                        "item_id": _to_int(frame, "item_id", path),
                        "rating": _to_float(frame, "rating", path),
                        "timestamp": _to_int(frame, "timestamp", path)})
    return out.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)


def _users(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": _to_int(frame, "user_id", path),
                        "age": _to_int(frame, "age", path)})
    for col in ("gender", "occupation", "zip_code"):
        out[col] = frame[col].astype("str").str.strip()
    return out.sort_values("user_id", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- MovieLens


def read_ml100k(folder: str | Path) -> CanonicalTables:
    """MovieLens-100K from RecBole atomic files or the GroupLens layout (auto-detected)."""
    folder = Path(folder)
    if (folder / ML100K_RECBOLE[0]).exists():
        return _read_ml100k_recbole(folder)
    if (folder / ML100K_GROUPLENS[0]).exists():
        return _read_ml100k_grouplens(folder)
    raise DataSourceError(f"{folder}: no MovieLens-100K files found (expected "
                          f"{', '.join(ML100K_RECBOLE)} or {', '.join(ML100K_GROUPLENS)})")


def _read_ml100k_recbole(folder: Path) -> CanonicalTables:
    inter_p, user_p, item_p = (folder / f for f in ML100K_RECBOLE)
    inter = _read_delimited(inter_p, "\t", ["user_id", "item_id", "rating", "timestamp"],
                            "utf-8", skip_header=True)
    users = _read_delimited(user_p, "\t", ["user_id", "age", "gender", "occupation",
                                           "zip_code"], "utf-8", skip_header=True)
    raw = _read_delimited(item_p, "\t", ["item_id", "title", "year", "genres"], "utf-8",
                          skip_header=True)
    titles, years, genres = [], [], []
    for title, year, classes in zip(raw.title, raw.year, raw.genres):
        title = "unknown" if title == "unkonwn" else title  # RecBole's typo for item 267
        clean, title_year = split_title(title)
        titles.append(clean)
        # RecBole took the year from the last parenthesis ("(V)" for one video title).
        years.append(int(year) if year.isdigit() else title_year)
        genres.append(classes.split())
    items = _movie_items(_to_int(raw, "item_id", item_p), titles, years, genres)
    return CanonicalTables(_interactions(inter, inter_p), _users(users, user_p), items,
                           MOVIELENS_SPEC, "ml-100k")


def _read_ml100k_grouplens(folder: Path) -> CanonicalTables:
    data_p, user_p, item_p = (folder / f for f in ML100K_GROUPLENS)
    inter = _read_delimited(data_p, "\t", ["user_id", "item_id", "rating", "timestamp"],
                            "latin-1")
    users = _read_delimited(user_p, "|", ["user_id", "age", "gender", "occupation",
                                          "zip_code"], "latin-1")
    names = ["item_id", "title", "release_date", "video_date", "url", *ML_GENRES]
    raw = _read_delimited(item_p, "|", names, "latin-1")
    titles, years, genres = [], [], []
    for _, row in raw.iterrows():
        clean, title_year = split_title(row.title)
        date_year = row.release_date[-4:] if row.release_date[-4:].isdigit() else None
        titles.append(clean)
        # RecBole (and so the default) takes the year from the title; fall back to the date.
        years.append(title_year if title_year is not None else
                     (int(date_year) if date_year else None))
        genres.append([g for g in ML_GENRES if row[g].strip() == "1"])
    items = _movie_items(_to_int(raw, "item_id", item_p), titles, years, genres)
    return CanonicalTables(_interactions(inter, data_p), _users(users, user_p), items,
                           MOVIELENS_SPEC, "ml-100k")


def read_ml1m(folder: str | Path) -> CanonicalTables:
    """MovieLens-1M in the GroupLens layout (``::``-separated, latin-1)."""
    folder = Path(folder)
    rat_p, user_p, movie_p = (folder / f for f in ML1M_FILES)
    inter = _read_delimited(rat_p, "::", ["user_id", "item_id", "rating", "timestamp"],
                            "latin-1")
    users = _read_delimited(user_p, "::", ["user_id", "gender", "age", "occupation",
                                           "zip_code"], "latin-1")
    raw = _read_delimited(movie_p, "::", ["item_id", "title", "genres"], "latin-1")
    pairs = [split_title(t) for t in raw.title]
    items = _movie_items(_to_int(raw, "item_id", movie_p), [p[0] for p in pairs],
                         [p[1] for p in pairs], [g.split("|") for g in raw.genres])
    return CanonicalTables(_interactions(inter, rat_p), _users(users, user_p), items,
                           MOVIELENS_SPEC, "ml-1m")


# --------------------------------------------------------------------------- generic CSV/Parquet


def read_table_file(path: str | Path, sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """Read one CSV or Parquet file as-is (CSV cells stay strings), naming the file on error."""
    return read_table(path, sep, encoding).frame


def _mapped(tf: TableFile, mapping: dict[str, str]) -> pd.DataFrame:
    """The file's columns renamed source -> canonical; missing or clashing ones name the file."""
    frame, path = tf.frame, tf.path
    missing = [src for src in mapping.values() if src not in frame.columns]
    if missing:
        hint = f"; {tf.sep_hint}" if tf.sep_hint else ""
        raise DataSourceError(f"{path}: missing column(s) {missing}; found "
                              f"{list(frame.columns)}{hint}")
    clash = [dst for dst, src in mapping.items() if dst != src and dst in frame.columns
             and dst not in mapping.values()]
    if clash:
        raise DataSourceError(f"{path}: column(s) {clash} exist and are also the target of the "
                              f"column mapping {mapping}; map or rename one of them")
    return frame.rename(columns={src: dst for dst, src in mapping.items()})


def _timestamps(frame: pd.DataFrame, path: Path, where: Where) -> pd.Series:
    numeric = pd.to_numeric(frame["timestamp"], errors="coerce")
    if numeric.notna().all():
        return _to_int(frame.assign(timestamp=numeric), "timestamp", path, where)
    parsed = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        raise DataSourceError(f"{path}: column 'timestamp' holds values that are neither Unix "
                              f"seconds nor dates: {_bad_values(frame, 'timestamp', bad, where)}")
    epoch = pd.Timestamp(0, tz="UTC")
    return ((parsed - epoch) // pd.Timedelta(seconds=1)).astype("int64")


def _csv_interactions(folder: Path, src: CsvSource) -> tuple[pd.DataFrame, str]:
    """The interactions file as canonical columns, and the kind of its timestamps."""
    cols = src.columns
    path = folder / src.interactions
    tf = read_table(path, file_sep(src, "interactions"), src.encoding)
    mapping = {"user_id": cols.user_id, "item_id": cols.item_id, "rating": cols.rating}
    if cols.timestamp is None:
        raw = _mapped(tf, mapping)
        log.info("%s: no timestamp column (data.csv.columns.timestamp is null): each user's "
                 "ratings keep the file's order (timestamp = row position)", path)
        raw = raw.assign(timestamp=np.arange(len(raw), dtype=np.int64))
        kind = "order"
    else:
        raw = _mapped(tf, {**mapping, "timestamp": cols.timestamp})
        raw = raw.assign(timestamp=_timestamps(raw, path, tf.where))
        kind = "unix"
    out = pd.DataFrame({"user_id": _to_int(raw, "user_id", path, tf.where),
                        "item_id": _to_int(raw, "item_id", path, tf.where),
                        "rating": _to_float(raw, "rating", path, tf.where),
                        "timestamp": raw["timestamp"].astype("int64")})
    return out.sort_values(["user_id", "timestamp", "item_id"], kind="stable"
                           ).reset_index(drop=True), kind


def _csv_users(folder: Path, src: CsvSource, interactions: pd.DataFrame) -> pd.DataFrame:
    if not src.users:
        return pd.DataFrame({"user_id": np.unique(interactions.user_id)})
    path = folder / src.users
    tf = read_table(path, file_sep(src, "users"), src.encoding)
    feats = {c: c for c in (*src.user_categorical, *src.user_numeric)}
    ufr = _mapped(tf, {"user_id": id_columns(src)[0], **feats})
    users = pd.DataFrame({"user_id": _to_int(ufr, "user_id", path, tf.where)})
    for c in src.user_categorical:
        users[c] = ufr[c].astype("str").str.strip()
    for c in src.user_numeric:
        users[c] = _to_float(ufr, c, path, tf.where)
    return users.sort_values("user_id").reset_index(drop=True)


def _csv_items(folder: Path, src: CsvSource, interactions: pd.DataFrame) -> pd.DataFrame:
    if not src.items:
        ids = np.unique(interactions.item_id)
        items = pd.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids]})
        items["text"] = items["title"]
        return items.astype({"title": "str", "text": "str"})
    path = folder / src.items
    tf = read_table(path, file_sep(src, "items"), src.encoding)
    feats = {c: c for c in (*src.item_categorical, *src.item_numeric, *src.item_multi,
                            *src.item_text)}
    ifr = _mapped(tf, {"item_id": id_columns(src)[1], "title": src.columns.title, **feats})
    items = pd.DataFrame({"item_id": _to_int(ifr, "item_id", path, tf.where),
                          "title": ifr["title"].fillna("").astype(str).str.strip()})
    for c in src.item_categorical:
        items[c] = ifr[c].astype("str").str.strip()
    for c in src.item_numeric:
        items[c] = _to_float(ifr, c, path, tf.where)
    for c in src.item_multi:
        items[c] = [[v.strip() for v in str(cell).split(src.multi_sep) if v.strip()]
                    if isinstance(cell, str) else [] for cell in ifr[c]]
    extra = [ifr[c].fillna("").astype(str) for c in src.item_text]
    items["text"] = [". ".join(p for p in (t, *rest) if p) + "."
                     for t, *rest in zip(items["title"], *extra)]
    items = items.astype({"title": "str", "text": "str"})
    return items.sort_values("item_id").reset_index(drop=True)


def read_csv_source(folder: str | Path, src: CsvSource) -> CanonicalTables:
    """A team's own interactions (+ optional users/items), mapped by ``data.csv``. Without a
    timestamp column (``columns.timestamp: null``) the canonical ``timestamp`` is each row's
    position in the interactions file, so each user's ratings keep the file's order."""
    folder = Path(folder)
    interactions, kind = _csv_interactions(folder, src)
    users = _csv_users(folder, src, interactions)
    items = _csv_items(folder, src, interactions)
    spec = FeatureSpec(user_categorical=src.user_categorical, user_numeric=src.user_numeric,
                       item_categorical=src.item_categorical, item_numeric=src.item_numeric,
                       item_multi=src.item_multi)
    return CanonicalTables(interactions, users, items, spec, "csv", timestamps=kind)


# --------------------------------------------------------------------------- dispatch


def dataset_dir(data: DataConfig) -> Path:
    """The folder of the configured dataset inside the DVC-tracked data directory."""
    return Path(data.raw_dir) / data.dataset


def read_source(data: DataConfig) -> CanonicalTables:
    """Read the configured dataset (``data.dataset``) from ``data.raw_dir``."""
    folder = dataset_dir(data)
    if not folder.is_dir():
        raise DataSourceError(f"{folder}: dataset folder not found; run `metarec data fetch`")
    if data.dataset == "ml-100k":
        return read_ml100k(folder)
    if data.dataset == "ml-1m":
        return read_ml1m(folder)
    return read_csv_source(folder, data.csv)
