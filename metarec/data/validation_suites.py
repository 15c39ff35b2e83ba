"""The planned checks of each table's suite (used by metarec.data.validation).

A :class:`Batch` is one table as Great Expectations sees it: the raw columns plus derived check
columns computed here with pandas (``_item_id_int64``, ``_rating_value``...), and the list of
expectations on them with the wording of their failures. Derived boolean columns hold None where
a check does not apply (GX skips nulls in column-map expectations), so one problem is reported
once: a null id by "not null", not again by "integer".

Raw cells may be anything a file or a caller's frame holds (text, bytes in any encoding, lists,
numbers beyond float range, nulls of every kind): every derivation here works value by value
where pandas' vectorised conversions could raise, and :meth:`Batch.guard` turns anything still
unexpected into a failed check that says it could not be evaluated, never a pass or a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from metarec.config import ValidationConfig
from metarec.data.tables import INTERACTION_COLUMNS, INTERACTION_DTYPES

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Mojibake: UTF-8 bytes decoded as Latin-1/cp1252 ("é" -> "Ã©", "'" -> "â€™"), or U+FFFD from
# bytes that were not valid in the declared encoding.
MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|Â[\u0080-\u00bf]|â€|\ufffd")
_INTEGER = re.compile(r"[+-]?[0-9]+")


# --------------------------------------------------------------------------- planned checks


@dataclass
class _Check:
    """One expectation plus how to word its failure; ``columns`` give the example values."""

    name: str
    expectation: Any
    column: str | None
    message: Callable[[int | None, Any], str]
    columns: tuple[str, ...] = ()


@dataclass
class Batch:
    """One table as GX sees it: the raw columns plus derived check columns. ``problems`` are
    failures found before GX runs (a check that could not be evaluated, a repeated column)."""

    table: str
    frame: pd.DataFrame
    raw: pd.DataFrame
    checks: list[_Check] = field(default_factory=list)
    derived: dict[str, pd.Series] = field(default_factory=dict)
    problems: list[tuple[str, str | None, str]] = field(default_factory=list)

    def add(self, name: str, kind: str, col: str | None, message: Callable, *,
            columns: tuple[str, ...] | None = None, **gx_kwargs: Any) -> None:
        """Plan GX expectation ``kind`` (class name); ``col`` is the column named in reports."""
        import great_expectations.expectations as gxe

        meta = {"metarec_check": f"{self.table}:{len(self.checks)}"}
        self.checks.append(_Check(name, getattr(gxe, kind)(**gx_kwargs, meta=meta), col, message,
                                  columns if columns is not None else ((col,) if col else ())))

    @contextlib.contextmanager
    def guard(self, name: str, col: str | None) -> Iterator[None]:
        """Derive checks in the block; an unexpected error fails check ``name`` as not
        evaluated (the verdict is a failure, with the error, never a silent pass)."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported as a failed check, with its cause
            log.debug("check %s of %s (%s) not evaluated", name, self.table, col, exc_info=True)
            self.problems.append((name, col, f"could not be evaluated: "
                                             f"{type(exc).__name__}: {exc}"))


def _flag(ok: pd.Series, present: pd.Series) -> pd.Series:
    """True/False where ``present``, None elsewhere (GX skips nulls in column-map checks)."""
    return ok.astype(object).where(present.astype(bool), None)


def _missing(v: Any) -> bool:
    """Scalar null test that never raises (lists and arrays are values, not nulls)."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v) or (
        isinstance(v, np.floating) and bool(np.isnan(v)))


def present_mask(raw: pd.Series) -> pd.Series:
    """Not null (pandas' notna: None, NaN, NA, NaT; lists and bytes are values)."""
    try:
        return raw.notna().astype(bool)
    except (TypeError, ValueError):  # an object pandas cannot test: one by one
        return pd.Series([not _missing(v) for v in raw.astype(object)], index=raw.index,
                         dtype=bool)


def _text(v: Any) -> str:
    """A cell as text: bytes decoded as UTF-8 (invalid bytes -> U+FFFD), anything else str()."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))  # 3.0 read from a float column is the integer id 3
    try:
        return str(v)
    except ValueError:  # an int beyond Python's str() digit limit
        return f"<{type(v).__name__} too large to print>"


def _as_int(s: str) -> int | None:
    """The integer ``s`` spells, or None when it overflows int64 (decided by length first:
    int() refuses very long digit strings)."""
    digits = s.lstrip("+-").lstrip("0")
    if len(digits) > 19:
        return None
    v = int(s)
    return v if INT64_MIN <= v <= INT64_MAX else None


def _id_keys(batch: Batch, col: str, label: str) -> pd.Series:
    """Check ``col`` holds int64-range integer ids; return comparable keys (None where null)."""
    raw = batch.raw[col]
    present = present_mask(raw)
    unsigned = pd.api.types.is_unsigned_integer_dtype(raw.dtype)
    if pd.api.types.is_integer_dtype(raw.dtype) and not (unsigned and raw.max() > INT64_MAX):
        return raw.astype(object).where(present, None)  # already int64-range integers
    values = raw.astype(object)
    text = pd.Series([_text(v) if p else None for v, p in zip(values, present)],
                     index=raw.index, dtype=object)
    stripped = text.map(lambda s: s.strip(), na_action="ignore")
    is_int = pd.Series([p and _INTEGER.fullmatch(s) is not None for s, p in zip(stripped, present)],
                       index=raw.index, dtype=bool)
    ints = pd.Series([_as_int(s) if ok else None for s, ok in zip(stripped, is_int)],
                     index=raw.index, dtype=object)
    batch.derived[f"_{col}_trimmed"] = _flag(text == stripped, present)
    batch.derived[f"_{col}_integer"] = _flag(is_int, present)
    batch.derived[f"_{col}_int64"] = _flag(ints.notna(), is_int)
    for suffix, what in (("trimmed", "have leading/trailing whitespace"),
                         ("integer", "are not integers (text, decimals or empty)"),
                         ("int64", "overflow int64")):
        batch.add(f"{label} {suffix}", "ExpectColumnValuesToBeInSet", col,
                  lambda n, obs, c=col, w=what: f"{n} '{c}' value(s) {w}",
                  column=f"_{col}_{suffix}", value_set=[True], columns=(col,))
    # Keys: the int where it is one, else the stripped text (so unknown ids still compare).
    return ints.where(ints.notna(), stripped).where(present, None)


def _one_number(v: Any) -> float:
    """A cell as a float (NaN when it is not a number); never raises."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        v = v.strip()
        if not v or "_" in v:  # float() accepts "1_000"; a data file does not mean that
            return math.nan
    try:
        return float(v)
    except OverflowError:  # an int beyond float range
        return math.inf if v > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


def _numbers(raw: pd.Series, dates: bool = False) -> pd.Series:
    """Numeric view of a raw column (NaN where not a number); ``dates``: dates -> Unix seconds."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        epoch = pd.Timestamp(0, tz=getattr(raw.dtype, "tz", None))
        return ((raw - epoch) / pd.Timedelta(seconds=1)).astype("float64")
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_object_dtype(raw.dtype):
        return pd.Series(raw.astype("Float64").to_numpy("float64", na_value=np.nan),
                         index=raw.index)
    try:
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
    except (TypeError, ValueError, OverflowError):
        num = pd.Series([_one_number(v) for v in raw.astype(object)], index=raw.index,
                        dtype="float64")
    if dates:
        todo = num.isna() & present_mask(raw)
        if todo.any():
            num[todo] = _date_seconds(raw[todo])
    return num


def _date_seconds(raw: pd.Series) -> pd.Series:
    """Dates (ISO and other formats pandas reads) -> Unix seconds; NaN where not a date."""
    text = raw.astype(object).map(_text)
    epoch = pd.Timestamp(0, tz="UTC")
    try:
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
        return (parsed - epoch) / pd.Timedelta(seconds=1)
    except (TypeError, ValueError, OverflowError):  # a value the parser chokes on: one by one
        out = []
        for s in text:
            try:
                out.append((pd.to_datetime(s, utc=True) - epoch) / pd.Timedelta(seconds=1))
            except (TypeError, ValueError, OverflowError):
                out.append(math.nan)
        return pd.Series(out, index=raw.index, dtype="float64")


def _require(batch: Batch, columns: tuple[str, ...], sources: dict[str, str],
             hint: str = "") -> list[str]:
    """Expect each column to exist; return those present."""
    have = list(batch.raw.columns)
    first_missing = next((c for c in columns if c not in have), None)
    for col in columns:
        src = f" (source column '{sources[col]}')" if sources.get(col, col) != col else ""
        extra = f"; {hint}" if hint and col == first_missing else ""  # said once
        batch.add("column exists", "ExpectColumnToExist", col,
                  lambda n, obs, c=col, s=src, e=extra: f"required column '{c}'{s} is missing; "
                  f"columns present: {have}{e}", column=col)
    batch.add("not empty", "ExpectTableRowCountToBeBetween", None,
              lambda n, obs: "table is empty (0 rows)", min_value=1)
    return [c for c in columns if c in batch.raw.columns]


def _not_null(batch: Batch, present: list[str]) -> None:
    for col in present:
        batch.add("not null", "ExpectColumnValuesToNotBeNull", col,
                  lambda n, obs, c=col: f"{n} null/missing value(s) in '{c}'", column=col)


def _dtypes(batch: Batch, dtypes: dict[str, str], present: list[str]) -> None:
    for col, dtype in dtypes.items():
        if col in present:
            batch.add("dtype", "ExpectColumnValuesToBeOfType", col,
                      lambda n, obs, c=col, d=dtype: f"column '{c}' has dtype {obs}, expected {d}",
                      column=col, type_=dtype)


# --------------------------------------------------------------------------- suites per table


def _ratings(b: Batch, cfg: ValidationConfig) -> None:
    raw = b.raw["rating"]
    num = _numbers(raw)
    b.derived["_rating_number"] = _flag(num.notna(), present_mask(raw))
    b.derived["_rating_value"] = num
    b.add("rating is a number", "ExpectColumnValuesToBeInSet", "rating",
          lambda n, obs: f"{n} rating value(s) are not numbers", column="_rating_number",
          value_set=[True], columns=("rating",))
    if cfg.implicit:
        b.add("label in {0, 1}", "ExpectColumnValuesToBeInSet", "rating",
              lambda n, obs: f"{n} label(s) not in {{0, 1}} (validation.implicit is true)",
              column="_rating_value", value_set=[0.0, 1.0], columns=("rating",))
    else:
        lo, hi = cfg.rating_min, cfg.rating_max
        b.add("rating in range", "ExpectColumnValuesToBeBetween", "rating",
              lambda n, obs: f"{n} rating(s) outside [{lo:g}, {hi:g}] (validation.rating_min/max)",
              column="_rating_value", min_value=lo, max_value=hi, columns=("rating",))


def _timestamps(b: Batch, cfg: ValidationConfig, now: float) -> pd.Series:
    raw = b.raw["timestamp"]
    num = _numbers(raw, dates=True)
    start = pd.Timestamp(cfg.timestamp_min, tz="UTC").timestamp()
    now_iso = pd.Timestamp(int(now), unit="s", tz="UTC").isoformat()
    b.derived["_timestamp_number"] = _flag(num.notna(), present_mask(raw))
    b.derived["_timestamp_seconds"] = num
    b.add("timestamp is a time", "ExpectColumnValuesToBeInSet", "timestamp",
          lambda n, obs: f"{n} timestamp(s) are neither Unix seconds nor dates",
          column="_timestamp_number", value_set=[True], columns=("timestamp",))
    b.add("timestamp after start", "ExpectColumnValuesToBeBetween", "timestamp",
          lambda n, obs: f"{n} timestamp(s) before {cfg.timestamp_min} (negative or implausibly "
          "early; validation.timestamp_min)", column="_timestamp_seconds", min_value=start,
          columns=("timestamp",))
    b.add("timestamp not in future", "ExpectColumnValuesToBeBetween", "timestamp",
          lambda n, obs: f"{n} timestamp(s) in the future (after {now_iso})",
          column="_timestamp_seconds", max_value=now, columns=("timestamp",))
    return num


def interactions_batch(raw: pd.DataFrame, cfg: ValidationConfig, strict: bool, now: float,
                       sources: dict[str, str], *, timed: bool = True, hint: str = ""
                       ) -> tuple[Batch, dict[str, pd.Series]]:
    """Suite of the interactions. ``timed`` false: there is no time (the source maps no
    timestamp, or the canonical timestamps are row order), so no timestamp range is checked and
    a duplicate is a repeated (user, item)."""
    b = Batch("interactions", raw, raw)
    needed = INTERACTION_COLUMNS if timed or strict else INTERACTION_COLUMNS[:3]
    present = _require(b, needed, sources, hint)
    _not_null(b, present)
    if strict:
        _dtypes(b, INTERACTION_DTYPES, present)
    keys: dict[str, pd.Series] = {}
    for c in ("user_id", "item_id"):
        if c in present:
            with b.guard(f"{c.replace('_', ' ')} integer", c):
                keys[c] = _id_keys(b, c, c.replace("_", " "))
    if "rating" in present:
        with b.guard("rating is a number", "rating"):
            _ratings(b, cfg)
    if "timestamp" in present and timed:
        with b.guard("timestamp is a time", "timestamp"):
            keys["timestamp"] = _timestamps(b, cfg, now)
    _no_duplicates(b, cfg, keys, timed)
    return b, keys


def _no_duplicates(b: Batch, cfg: ValidationConfig, keys: dict[str, pd.Series],
                   timed: bool) -> None:
    cols = ("user_id", "item_id", "timestamp") if timed else ("user_id", "item_id")
    if cfg.duplicates != "error" or any(c not in keys for c in cols):
        return
    for col in cols:
        b.derived[f"_{col}_key"] = keys[col]
    what = ", ".join(cols)
    why = "" if timed else "; without timestamps a repeated (user_id, item_id) is a duplicate"
    b.add(f"no duplicate ({what.replace('_id', '')})", "ExpectCompoundColumnsToBeUnique", what,
          lambda n, obs: f"{n} rows share ({what}) with another row (validation.duplicates is "
          f"'error'{why})", column_list=[f"_{c}_key" for c in cols], columns=cols)


def entity_batch(raw: pd.DataFrame, table: str, id_col: str, text: tuple[str, ...],
                 numeric: tuple[str, ...], others: tuple[str, ...], strict: bool,
                 sources: dict[str, str], hint: str = "") -> tuple[Batch, pd.Series | None]:
    """Suite of the users or items table: unique valid ids, text, feature columns."""
    b = Batch(table, raw, raw)
    present = _require(b, (id_col, *text, *numeric, *others), sources, hint)
    _not_null(b, [c for c in (id_col, *text) if c in present])
    if strict:
        _dtypes(b, {id_col: "int64"}, present)
    keys = None
    if id_col in present:
        with b.guard(f"{id_col.replace('_', ' ')} integer", id_col):
            keys = _id_keys(b, id_col, id_col.replace("_", " "))
            b.derived[f"_{id_col}_key"] = keys
            b.add("unique id", "ExpectColumnValuesToBeUnique", id_col,
                  lambda n, obs: f"{n} row(s) share a {id_col} with another row",
                  column=f"_{id_col}_key", columns=(id_col,))
    for col in (c for c in text if c in present):
        with b.guard(f"{col} nonempty", col):
            _text_checks(b, col)
    for col in (c for c in numeric if c in present):
        with b.guard("numeric feature", col):
            b.derived[f"_{col}_number"] = _flag(_numbers(raw[col]).notna(), present_mask(raw[col]))
            b.add("numeric feature", "ExpectColumnValuesToBeInSet", col,
                  lambda n, obs, c=col: f"{n} value(s) of numeric feature '{c}' are not numbers",
                  column=f"_{col}_number", value_set=[True], columns=(col,))
    return b, keys


def _text_checks(b: Batch, col: str) -> None:
    """A text column is not blank and not mis-encoded (mojibake, U+FFFD, raw bytes)."""
    raw = b.raw[col]
    present = present_mask(raw)
    values = raw.astype(object)
    s = pd.Series([_text(v) if p else None for v, p in zip(values, present)], index=raw.index,
                  dtype=object)
    nonempty = s.map(lambda v: bool(v.strip()), na_action="ignore")
    clean = pd.Series([p and not isinstance(v, bytes) and MOJIBAKE.search(t) is None
                       for v, t, p in zip(values, s, present)], index=raw.index, dtype=bool)
    b.derived[f"_{col}_nonempty"] = _flag(nonempty.fillna(False).astype(bool), present)
    b.derived[f"_{col}_encoding"] = _flag(clean, present)
    for suffix, what in (("nonempty", "are empty or blank"),
                         ("encoding", "look mis-encoded (mojibake such as 'Ã©' or U+FFFD; "
                          "mixed encodings?)")):
        b.add(f"{col} {suffix}", "ExpectColumnValuesToBeInSet", col,
              lambda n, obs, c=col, w=what: f"{n} {c}(s) {w}", column=f"_{col}_{suffix}",
              value_set=[True], columns=(col,))


def add_known(b: Batch, keys: pd.Series, known: pd.Series, col: str, table: str) -> None:
    with b.guard(f"{col} known", col):
        ok = keys.isin(list({k for k in known if k is not None})).astype(bool)
        b.derived[f"_{col}_known"] = _flag(ok, keys.notna())
        b.add(f"{col} known", "ExpectColumnValuesToBeInSet", col,
              lambda n, obs: f"{n} interaction(s) reference {col}(s) missing from the {table} "
              "table", column=f"_{col}_known", value_set=[True], columns=(col,))


def task_users_batch(keys: pd.Series, cfg: ValidationConfig, lo: int, hi: int) -> Batch:
    """Per-user interaction counts: enough users must be eligible for the task protocol."""
    counts = keys.dropna().astype(object).value_counts()
    frame = pd.DataFrame({"user": [str(u) for u in counts.index],
                          "n_interactions": counts.to_numpy(dtype=np.int64),
                          "eligible": ((counts >= lo) & (counts <= hi)).astype("int64").to_numpy()})
    b = Batch("interactions_per_user", frame, frame)
    need = cfg.min_task_users
    b.add("enough task users", "ExpectColumnSumToBeBetween", "user_id",
          lambda n, obs: f"only {obs} of {len(frame)} users have {lo}..{hi} interactions "
          f"(tasks.min_ratings..max_ratings); at least {need} needed (validation.min_task_users)",
          column="eligible", min_value=need, columns=())
    return b
