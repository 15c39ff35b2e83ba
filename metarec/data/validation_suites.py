"""The planned checks of each table's suite (used by metarec.data.validation).

A :class:`Batch` is one table as Great Expectations sees it: the raw columns plus derived check
columns computed here with pandas (``_item_id_int64``, ``_rating_value``...), and the list of
expectations on them with the wording of their failures. Derived boolean columns hold None where
a check does not apply (GX skips nulls in column-map expectations), so one problem is reported
once: a null id by "not null", not again by "integer".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from metarec.config import ValidationConfig
from metarec.data.tables import INTERACTION_COLUMNS, INTERACTION_DTYPES

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Mojibake: UTF-8 bytes decoded as Latin-1/cp1252 ("é" -> "Ã©", "'" -> "â€™"), or U+FFFD from
# bytes that were not valid in the declared encoding.
MOJIBAKE = r"Ã[\u0080-\u00bf]|Â[\u0080-\u00bf]|â€|\ufffd"


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
    """One table as GX sees it: the raw columns plus derived check columns."""

    table: str
    frame: pd.DataFrame
    raw: pd.DataFrame
    checks: list[_Check] = field(default_factory=list)
    derived: dict[str, pd.Series] = field(default_factory=dict)

    def add(self, name: str, kind: str, col: str | None, message: Callable, *,
            columns: tuple[str, ...] | None = None, **gx_kwargs: Any) -> None:
        """Plan GX expectation ``kind`` (class name); ``col`` is the column named in reports."""
        import great_expectations.expectations as gxe

        meta = {"metarec_check": f"{self.table}:{len(self.checks)}"}
        self.checks.append(_Check(name, getattr(gxe, kind)(**gx_kwargs, meta=meta), col, message,
                                  columns if columns is not None else ((col,) if col else ())))


def _flag(ok: pd.Series, present: pd.Series) -> pd.Series:
    """True/False where ``present``, None elsewhere (GX skips nulls in column-map checks)."""
    return ok.astype(object).where(present, None)


def _id_keys(batch: Batch, col: str, label: str) -> pd.Series:
    """Check ``col`` holds int64-range integer ids; return comparable keys (None where null)."""
    raw = batch.raw[col]
    present = raw.notna()
    unsigned = pd.api.types.is_unsigned_integer_dtype(raw.dtype)
    if pd.api.types.is_integer_dtype(raw.dtype) and not (unsigned and raw.max() > INT64_MAX):
        return raw.astype(object).where(present, None)  # already int64-range integers
    if pd.api.types.is_float_dtype(raw.dtype):
        text = raw.map(lambda v: str(int(v)) if math.isfinite(v) and float(v).is_integer()
                       else repr(float(v)), na_action="ignore")
    else:
        text = raw.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
                       na_action="ignore")
    text = text.astype(object)
    stripped = text.map(str.strip, na_action="ignore")
    is_int = stripped.map(lambda s: s.lstrip("+-").isdigit() and s.lstrip("+-").isascii(),
                          na_action="ignore").fillna(False).astype(bool)
    ints = stripped.where(is_int & present).map(int, na_action="ignore")
    fits = ints.map(lambda v: INT64_MIN <= v <= INT64_MAX, na_action="ignore")
    batch.derived[f"_{col}_trimmed"] = _flag(text == stripped, present)
    batch.derived[f"_{col}_integer"] = _flag(is_int, present)
    batch.derived[f"_{col}_int64"] = _flag(fits.fillna(True).astype(bool), is_int & present)
    for suffix, what in (("trimmed", "have leading/trailing whitespace"),
                         ("integer", "are not integers (text, decimals or empty)"),
                         ("int64", "overflow int64")):
        batch.add(f"{label} {suffix}", "ExpectColumnValuesToBeInSet", col,
                  lambda n, obs, c=col, w=what: f"{n} '{c}' value(s) {w}",
                  column=f"_{col}_{suffix}", value_set=[True], columns=(col,))
    return ints.astype(object).where(is_int & present, stripped.where(present, None))


def _numbers(raw: pd.Series, dates: bool = False) -> pd.Series:
    """Numeric view of a raw column (NaN where not a number); ``dates``: ISO dates -> seconds."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        return pd.Series(raw.astype("int64") // 10**9, index=raw.index, dtype="float64")
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("float64")
    num = pd.to_numeric(raw, errors="coerce") if raw.dtype == object or not \
        pd.api.types.is_numeric_dtype(raw.dtype) else raw.astype("float64")
    num = num.astype("float64")
    if dates and (num.isna() & raw.notna()).any():
        todo = num.isna() & raw.notna()
        parsed = pd.to_datetime(raw[todo].astype(str), errors="coerce", utc=True, format="mixed")
        num[todo] = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return num


def _require(batch: Batch, columns: tuple[str, ...], sources: dict[str, str]) -> list[str]:
    """Expect each column to exist; return those present."""
    have = list(batch.raw.columns)
    for col in columns:
        src = f" (source column '{sources[col]}')" if sources.get(col, col) != col else ""
        batch.add("column exists", "ExpectColumnToExist", col,
                  lambda n, obs, c=col, s=src: f"required column '{c}'{s} is missing; "
                  f"columns present: {have}", column=col)
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
    b.derived["_rating_number"] = _flag(num.notna(), raw.notna())
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
    b.derived["_timestamp_number"] = _flag(num.notna(), raw.notna())
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
                  sources: dict[str, str]) -> tuple[Batch, dict[str, pd.Series]]:
    b = Batch("interactions", raw, raw)
    present = _require(b, INTERACTION_COLUMNS, sources)
    _not_null(b, present)
    if strict:
        _dtypes(b, INTERACTION_DTYPES, present)
    keys = {c: _id_keys(b, c, c.replace("_", " ")) for c in ("user_id", "item_id") if c in present}
    if "rating" in present:
        _ratings(b, cfg)
    if "timestamp" in present:
        keys["timestamp"] = _timestamps(b, cfg, now)
    if cfg.duplicates == "error" and len(keys) == 3:
        for col, key in keys.items():
            b.derived[f"_{col}_key"] = key
        b.add("no duplicate (user, item, timestamp)", "ExpectCompoundColumnsToBeUnique",
              "user_id, item_id, timestamp",
              lambda n, obs: f"{n} rows share (user_id, item_id, timestamp) with another row "
              "(validation.duplicates is 'error')",
              column_list=[f"_{c}_key" for c in keys], columns=tuple(keys))
    return b, keys


def entity_batch(raw: pd.DataFrame, table: str, id_col: str, text: tuple[str, ...],
              numeric: tuple[str, ...], others: tuple[str, ...], strict: bool,
              sources: dict[str, str]) -> tuple[Batch, pd.Series | None]:
    """Suite of the users or items table: unique valid ids, text, feature columns."""
    b = Batch(table, raw, raw)
    present = _require(b, (id_col, *text, *numeric, *others), sources)
    _not_null(b, [c for c in (id_col, *text) if c in present])
    if strict:
        _dtypes(b, {id_col: "int64"}, present)
    keys = None
    if id_col in present:
        keys = _id_keys(b, id_col, id_col.replace("_", " "))
        b.derived[f"_{id_col}_key"] = keys
        b.add("unique id", "ExpectColumnValuesToBeUnique", id_col,
              lambda n, obs: f"{n} row(s) share a {id_col} with another row",
              column=f"_{id_col}_key", columns=(id_col,))
    for col in (c for c in text if c in present):
        s = raw[col].map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes)
                         else str(v), na_action="ignore").astype(object)
        b.derived[f"_{col}_nonempty"] = _flag(s.str.strip().str.len() > 0, s.notna())
        b.derived[f"_{col}_encoding"] = _flag(~s.str.contains(MOJIBAKE, regex=True) &
                                              ~raw[col].map(lambda v: isinstance(v, bytes)),
                                              s.notna())
        for suffix, what in (("nonempty", "are empty or blank"),
                             ("encoding", "look mis-encoded (mojibake such as 'Ã©' or U+FFFD; "
                              "mixed encodings?)")):
            b.add(f"{col} {suffix}", "ExpectColumnValuesToBeInSet", col,
                  lambda n, obs, c=col, w=what: f"{n} {c}(s) {w}", column=f"_{col}_{suffix}",
                  value_set=[True], columns=(col,))
    for col in (c for c in numeric if c in present):
        b.derived[f"_{col}_number"] = _flag(_numbers(raw[col]).notna(), raw[col].notna())
        b.add("numeric feature", "ExpectColumnValuesToBeInSet", col,
              lambda n, obs, c=col: f"{n} value(s) of numeric feature '{c}' are not numbers",
              column=f"_{col}_number", value_set=[True], columns=(col,))
    return b, keys


def add_known(b: Batch, keys: pd.Series, known: pd.Series, col: str, table: str) -> None:
    b.derived[f"_{col}_known"] = _flag(keys.isin(list(known.dropna().unique())), keys.notna())
    b.add(f"{col} known", "ExpectColumnValuesToBeInSet", col,
          lambda n, obs: f"{n} interaction(s) reference {col}(s) missing from the {table} table",
          column=f"_{col}_known", value_set=[True], columns=(col,))


def task_users_batch(keys: pd.Series, cfg: ValidationConfig, lo: int, hi: int) -> Batch:
    """Per-user interaction counts: enough users must be eligible for the task protocol."""
    counts = keys.dropna().value_counts()
    frame = pd.DataFrame({"user": counts.index.astype(str), "n_interactions": counts.to_numpy(),
                          "eligible": ((counts >= lo) & (counts <= hi)).astype("int64").to_numpy()})
    b = Batch("interactions_per_user", frame, frame)
    need = cfg.min_task_users
    b.add("enough task users", "ExpectColumnSumToBeBetween", "user_id",
          lambda n, obs: f"only {obs} of {len(frame)} users have {lo}..{hi} interactions "
          f"(tasks.min_ratings..max_ratings); at least {need} needed (validation.min_task_users)",
          column="eligible", min_value=need, columns=())
    return b
