"""A user's table files (CSV/TSV text or Parquet) read with errors a person can act on.

Shared by the generic CSV source (:mod:`metarec.data.sources`) and `metarec data validate`
(:mod:`metarec.data.validation`). Before pandas parses anything the bytes are checked for what
is not text at all (NUL bytes; a Parquet, zip, gzip or Office file under a text name) and
decoded with the declared encoding, so the error names the file, the line and the byte. A
header read as one column that contains another separator gets a hint naming that separator.

:func:`read_raw_files` reads the files of a generic CSV source by its ``data.csv`` mapping
(a separator per file, the users/items files' own id column names, an optional timestamp).

Rows are located as a person finds them in an editor: :attr:`TableFile.where` gives the 1-based
line of the file on which a data row starts, the header counting as line 1 (so the first data
row of a CSV is "line 2"); Parquet rows are "row N", counted from 1.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from metarec.config import CsvSource
from metarec.data.tables import DataSourceError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Separators a header is searched for when it was read as a single column.
SEPARATORS = (",", ";", "\t", "|")
# (leading bytes, what the file is, what to do)
_MAGIC = ((b"PAR1", "a Parquet file", "give it a .parquet name"),
          (b"PK\x03\x04", "a zip archive (or an Excel .xlsx workbook)",
           "unzip it, or export the sheet as CSV"),
          (b"\x1f\x8b", "gzip-compressed", "decompress it first"),
          (b"\xd0\xcf\x11\xe0", "an Office document (.xls?)", "export the sheet as CSV"))
_SNIFF = 8192


@dataclass
class TableFile:
    """One file read as a table: its cells (strings for text files), where it came from, and
    how to point at its rows."""

    frame: pd.DataFrame
    path: Path
    sep: str | None = None  # None: Parquet
    # 1-based line on which each data row starts (header = line 1); None for Parquet, or when
    # the lines could not be matched to pandas' rows.
    lines: np.ndarray | None = None
    # Problems found while reading that are not fatal: bytes invalid in the encoding, a header
    # that looks split by another separator. Each names the file.
    hints: list[str] = field(default_factory=list)
    # The separator hint alone (without the file name), for a missing-column message.
    sep_hint: str = ""

    def where(self, rows: Iterable[int]) -> list[str]:
        """Human locations of 0-based frame rows: ``"line 4"`` (text) or ``"row 3"``."""
        if self.lines is not None:
            return [f"line {int(self.lines[r])}" for r in rows if 0 <= r < len(self.lines)]
        return [f"row {int(r) + 1}" for r in rows]


def _not_text(path: Path, head: bytes) -> str | None:
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            return f"{path}: this is {what}, not CSV text; {fix}"
    nul = head.find(b"\x00")
    if nul >= 0:
        utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff")
        return (f"{path}: binary data, not CSV text (NUL byte at offset {nul})"
                + ("; it looks like UTF-16 text: save it as UTF-8, or set its encoding to "
                   "utf-16" if utf16 else ""))
    return None


def decode(path: Path, data: bytes, encoding: str, strict: bool) -> tuple[str, list[str]]:
    """``data`` as text. ``strict``: invalid bytes are a :class:`DataSourceError` naming the line
    and byte; else they become U+FFFD and a hint says how many lines hold them."""
    try:
        text = data.decode(encoding)
        hints: list[str] = []
    except LookupError:
        raise DataSourceError(f"{path}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = (f"line {line}, byte 0x{data[exc.start]:02x} at offset {exc.start}")
        fix = ("wrong encoding? Set the file's encoding (data.csv.encoding), e.g. latin-1 or "
               "cp1252, or re-save the file as UTF-8")
        if strict:
            raise DataSourceError(f"{path}: not valid {encoding} text ({where}); {fix}") from None
        text = data.decode(encoding, errors="replace")
        bad = sum(1 for ln in text.splitlines() if "\ufffd" in ln)
        hints = [f"{path}: {bad} line(s) hold bytes that are not valid {encoding} (first: "
                 f"{where}), read as U+FFFD; {fix}"]
    return text.removeprefix("\ufeff"), hints


def separator_hint(header: str, sep: str) -> str:
    """A hint when the header does not contain ``sep`` but another usual separator."""
    if sep in header:
        return ""
    found = [(header.count(c), c) for c in SEPARATORS if c != sep and c in header]
    if not found:
        return ""
    _, best = max(found)
    return (f"wrong separator? The header was read as one column with separator {sep!r} but "
            f"contains {best!r}: set the file's separator to {best!r} (data.csv.sep, or "
            "users_sep / items_sep)")


def record_lines(text: str, sep: str) -> np.ndarray:
    """1-based line on which each record (header included) starts, blank lines skipped as
    pandas skips them; quoted fields may span lines."""
    if '"' not in text:  # a whitespace-only line without the separator is blank to pandas
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return np.array([i + 1 for i, ln in enumerate(lines) if ln.strip() or sep in ln],
                        dtype=np.int64)
    starts, prev = [], 0
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep if len(sep) == 1 else ",",
                        quotechar='"', doublequote=True, strict=False)
    for rec in reader:
        if rec and not (len(rec) == 1 and not rec[0].strip()):
            starts.append(prev + 1)
        prev = reader.line_num
    return np.array(starts, dtype=np.int64)


def _parse_text(path: Path, text: str, sep: str) -> pd.DataFrame:
    multi = len(sep) > 1
    try:
        return pd.read_csv(io.StringIO(text), sep=re.escape(sep) if multi else sep,
                           engine="python" if multi else "c", dtype=object,
                           keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"{path}: empty file (no header line)") from None
    except (pd.errors.ParserError, ValueError) as exc:
        hint = separator_hint(text.split("\n", 1)[0], sep)
        raise DataSourceError(f"{path}: cannot be parsed as {sep!r}-separated text: "
                              f"{str(exc).strip()}" + (f". {hint}" if hint else "")) from None


def read_table(path: str | Path, sep: str = ",", encoding: str = "utf-8", *,
               strict_encoding: bool = True) -> TableFile:
    """Read one CSV/TSV (cells stay strings, empty cells are missing) or Parquet file.

    Raises :class:`DataSourceError` naming ``path`` for a missing, binary, undecodable (when
    ``strict_encoding``) or unparsable file, or an unsupported suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    if suffix not in TEXT_SUFFIXES:
        raise DataSourceError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .txt "
                              "or .parquet)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataSourceError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    problem = _not_text(path, data[:_SNIFF])
    if problem:
        raise DataSourceError(problem)
    text, hints = decode(path, data, encoding, strict_encoding)
    frame = _parse_text(path, text, sep)
    sep_hint = separator_hint(text.split("\n", 1)[0], sep) if len(frame.columns) == 1 else ""
    hints += [f"{path}: {sep_hint}"] if sep_hint else []
    lines = record_lines(text, sep)
    # Data rows start after the header record; unmatched counts mean an unusual layout.
    lines = lines[1:] if len(lines) == len(frame) + 1 else None
    return TableFile(frame, path, sep, lines, hints, sep_hint)


def _read_parquet(path: Path) -> TableFile:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all mean "not Parquet"
        head = path.read_bytes()[:_SNIFF]
        looks_text = b"\x00" not in head and bool(head.strip())
        raise DataSourceError(
            f"{path}: cannot be read as parquet: {type(exc).__name__}: {exc}"
            + ("; it looks like text: give a CSV file a .csv name" if looks_text else "")
        ) from None
    return TableFile(frame, path)


# --------------------------------------------------------------------------- the data.csv mapping


def file_sep(src: CsvSource, table: str) -> str:
    """The separator of the ``table`` file ("interactions", "users", "items"): its own
    (``users_sep``, ``items_sep``) when set, else ``sep``."""
    own = {"users": src.users_sep, "items": src.items_sep}.get(table)
    return own if own else src.sep


def id_columns(src: CsvSource) -> tuple[str, str]:
    """The id column names of the users and the items file (``columns.users_id`` /
    ``items_id``, else the interactions' ``user_id`` / ``item_id``)."""
    c = src.columns
    return c.users_id or c.user_id, c.items_id or c.item_id


def read_raw_files(interactions: str | Path, users: str | Path | None = None,
                   items: str | Path | None = None, csv_cfg: CsvSource = CsvSource()
                   ) -> dict[str, TableFile]:
    """Read CSV/Parquet files as they are (CSV cells stay strings; bytes invalid in the
    encoding become U+FFFD and a hint), columns renamed to canonical by ``data.csv``.

    Missing mapped columns are left missing: validation reports them. A file that is missing,
    binary or not parsable is a :class:`~metarec.data.tables.DataSourceError` naming it.
    """
    c = csv_cfg.columns
    user_col, item_col = id_columns(csv_cfg)
    wanted = {"interactions": (interactions, {"user_id": c.user_id, "item_id": c.item_id,
                                              "rating": c.rating, "timestamp": c.timestamp}),
              "users": (users, {"user_id": user_col}),
              "items": (items, {"item_id": item_col, "title": c.title})}
    out = {}
    for table, (path, mapping) in wanted.items():
        if path is None:
            continue
        tf = read_table(path, file_sep(csv_cfg, table), csv_cfg.encoding, strict_encoding=False)
        if table == "interactions" and c.timestamp is None:
            tf.frame = tf.frame.drop(columns=["timestamp"], errors="ignore")
        tf.frame = tf.frame.rename(columns={s: d for d, s in mapping.items()
                                            if s is not None and s in tf.frame.columns})
        out[table] = tf
    return out
