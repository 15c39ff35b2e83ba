"""Data contracts: one Great Expectations 1.x suite per table, run before anything is built.

Suites are built from the canonical schema (metarec.data.tables), the ``validation`` section of
params.yaml and the task protocol (``tasks.min_ratings``/``max_ratings``). They run on *raw*
frames (strings straight from a CSV, ids with whitespace, ratings like ``"five"``) as well as on
canonical tables, so bad data is caught before or while it is coerced. Checks GX cannot state
directly (id syntax and int64 range, referential integrity, mojibake, users eligible for tasks)
are computed with pandas into derived columns (``_item_id_known``...) that GX expectations then
check, so every verdict appears in one GX result.

Public API: :func:`validate_frames`, :func:`validate_tables`, :func:`load_raw_files`,
:func:`raise_if_failed`, :class:`ValidationReport`. GX is imported lazily (its import is ~4 s).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from metarec.config import ColumnMap, Config, CsvSource, ValidationConfig
from metarec.data.tables import INTERACTION_COLUMNS, INTERACTION_DTYPES, CanonicalTables
from metarec.data.tables import FeatureSpec
from metarec.io import atomic_dir, write_json

logger = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Mojibake: UTF-8 bytes decoded as Latin-1/cp1252 ("é" -> "Ã©", "'" -> "â€™"), or U+FFFD from
# bytes that were not valid in the declared encoding.
MOJIBAKE = r"Ã[\u0080-\u00bf]|Â[\u0080-\u00bf]|â€|\ufffd"
GX_RESULT_FILE = "gx_result.json"
REPORT_FILE = "report.json"


class DataValidationError(ValueError):
    """Data that broke its contract; the message is the readable report."""

    def __init__(self, report: "ValidationReport"):
        super().__init__(report.to_text())
        self.report = report


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Failure:
    """One failed expectation. ``failing_count`` is a row count, or None for table-level ones."""

    table: str
    expectation: str
    column: str | None
    failing_count: int | None
    examples: list[Any]
    message: str


@dataclass
class ValidationReport:
    """The verdict of all suites: ``passed`` is true only when no expectation failed."""

    passed: bool
    failures: list[Failure] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    evaluated: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": [asdict(f) for f in self.failures],
                "rows": dict(self.rows), "evaluated": self.evaluated,
                "seconds": round(self.seconds, 3)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        """Plain text: one line per failure (table, expectation, count, examples)."""
        head = (f"validation {'passed' if self.passed else 'FAILED'}: {self.evaluated} "
                f"expectations, {len(self.failures)} failed; rows {self.rows}")
        lines = [head]
        for f in self.failures:
            count = "-" if f.failing_count is None else str(f.failing_count)
            lines.append(f"  [{f.table}] {f.expectation} ({f.column or 'table'}): "
                         f"{count} failing; {f.message}; e.g. {f.examples}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = [f"**Validation {'passed' if self.passed else 'failed'}** "
                f"({self.evaluated} expectations, {len(self.failures)} failed)", ""]
        if self.failures:
            rows += ["| table | expectation | column | failing | examples | message |",
                     "|---|---|---|---|---|---|"]
            for f in self.failures:
                count = "-" if f.failing_count is None else str(f.failing_count)
                ex = ", ".join(str(e) for e in f.examples).replace("|", "\\|")
                msg = f.message.replace("|", "\\|")
                rows.append(f"| {f.table} | {f.expectation} | {f.column or ''} | {count} | "
                            f"{ex} | {msg} |")
        return "\n".join(rows) + "\n"


def raise_if_failed(report: ValidationReport) -> ValidationReport:
    """Return ``report`` if it passed, else raise :class:`DataValidationError` with its text."""
    if not report.passed:
        raise DataValidationError(report)
    return report


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
class _Batch:
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


def _id_keys(batch: _Batch, col: str, label: str) -> pd.Series:
    """Check ``col`` holds int64-range integer ids; return comparable keys (None where null)."""
    raw = batch.raw[col]
    present = raw.notna()
    if pd.api.types.is_integer_dtype(raw.dtype):
        return raw.astype(object).where(present, None)
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


def _require(batch: _Batch, columns: tuple[str, ...], sources: dict[str, str]) -> list[str]:
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


def _not_null(batch: _Batch, present: list[str]) -> None:
    for col in present:
        batch.add("not null", "ExpectColumnValuesToNotBeNull", col,
                  lambda n, obs, c=col: f"{n} null/missing value(s) in '{c}'", column=col)


def _dtypes(batch: _Batch, dtypes: dict[str, str], present: list[str]) -> None:
    for col, dtype in dtypes.items():
        if col in present:
            batch.add("dtype", "ExpectColumnValuesToBeOfType", col,
                      lambda n, obs, c=col, d=dtype: f"column '{c}' has dtype {obs}, expected {d}",
                      column=col, type_=dtype)


# --------------------------------------------------------------------------- suites per table


def _ratings(b: _Batch, cfg: ValidationConfig) -> None:
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


def _timestamps(b: _Batch, cfg: ValidationConfig, now: float) -> pd.Series:
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


def _interactions(raw: pd.DataFrame, cfg: ValidationConfig, strict: bool, now: float,
                  sources: dict[str, str]) -> tuple[_Batch, dict[str, pd.Series]]:
    b = _Batch("interactions", raw, raw)
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


def _entities(raw: pd.DataFrame, table: str, id_col: str, text: tuple[str, ...],
              numeric: tuple[str, ...], others: tuple[str, ...], strict: bool,
              sources: dict[str, str]) -> tuple[_Batch, pd.Series | None]:
    """Suite of the users or items table: unique valid ids, text, feature columns."""
    b = _Batch(table, raw, raw)
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


def _known(b: _Batch, keys: pd.Series, known: pd.Series, col: str, table: str) -> None:
    b.derived[f"_{col}_known"] = _flag(keys.isin(list(known.dropna().unique())), keys.notna())
    b.add(f"{col} known", "ExpectColumnValuesToBeInSet", col,
          lambda n, obs: f"{n} interaction(s) reference {col}(s) missing from the {table} table",
          column=f"_{col}_known", value_set=[True], columns=(col,))


def _task_users(keys: pd.Series, cfg: ValidationConfig, lo: int, hi: int) -> _Batch:
    """Per-user interaction counts: enough users must be eligible for the task protocol."""
    counts = keys.dropna().value_counts()
    frame = pd.DataFrame({"user": counts.index.astype(str), "n_interactions": counts.to_numpy(),
                          "eligible": ((counts >= lo) & (counts <= hi)).astype("int64").to_numpy()})
    b = _Batch("interactions_per_user", frame, frame)
    need = cfg.min_task_users
    b.add("enough task users", "ExpectColumnSumToBeBetween", "user_id",
          lambda n, obs: f"only {obs} of {len(frame)} users have {lo}..{hi} interactions "
          f"(tasks.min_ratings..max_ratings); at least {need} needed (validation.min_task_users)",
          column="eligible", min_value=need, columns=())
    return b


# --------------------------------------------------------------------------- running GX


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _examples(b: _Batch, res: dict, columns: tuple[str, ...], limit: int) -> list[Any]:
    idx = res.get("partial_unexpected_index_list")
    if idx and columns and all(c in b.raw.columns for c in columns):
        rows = b.raw.loc[[i for i in idx if i in b.raw.index], list(columns)]
        values = rows.iloc[:, 0].tolist() if len(columns) == 1 else \
            [tuple(r) for r in rows.itertuples(index=False)]
    else:
        values = res.get("partial_unexpected_list") or (
            [res["observed_value"]] if res.get("observed_value") is not None else [])
    out: list[Any] = []
    for v in map(_jsonable, values):
        if v not in out:
            out.append(v)
    return out[:limit]


def _failures(b: _Batch, result: Any, limit: int) -> list[Failure]:
    checks = {c.expectation.meta["metarec_check"]: c for c in b.checks}
    table = "interactions" if b.table == "interactions_per_user" else b.table
    out = []
    for r in result.results:
        if r.success:
            continue
        check = checks[r.expectation_config.meta["metarec_check"]]
        res = dict(r.result or {})
        count = res.get("unexpected_count")
        exc = r.exception_info if isinstance(r.exception_info, dict) else {}
        if exc.get("raised_exception"):
            message = f"could not be evaluated: {exc.get('exception_message')}"
        else:
            message = check.message(count, res.get("observed_value"))
        out.append(Failure(table, check.name, check.column, count,
                           _examples(b, res, check.columns, limit), message))
    return out


def _run_gx(batches: list[_Batch], artifact_dir: Path | None, data_docs: bool) -> dict[str, Any]:
    """Run one suite per batch in an ephemeral GX context; keep the full results if asked."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("metarec")
    results = {}
    for b in batches:
        batch_def = source.add_dataframe_asset(b.table).add_batch_definition_whole_dataframe(
            b.table)
        suite = ctx.suites.add(gx.ExpectationSuite(
            name=b.table, expectations=[c.expectation for c in b.checks]))
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=b.table, data=batch_def, suite=suite))
        frame = pd.concat([b.frame, pd.DataFrame(b.derived, index=b.frame.index)], axis=1)
        results[b.table] = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    if artifact_dir is not None:
        payload = {t: r.to_json_dict() for t, r in results.items()}
        write_json(artifact_dir / GX_RESULT_FILE, json.loads(json.dumps(payload, default=str)))
        if data_docs:
            _build_docs(ctx, artifact_dir / "data_docs")
    return results


def _build_docs(ctx: Any, dest: Path) -> None:
    """Render GX Data Docs HTML into ``dest`` (atomically); a GX failure only logs a warning."""
    try:
        with atomic_dir(dest) as tmp:
            ctx.add_data_docs_site(site_name="metarec", site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(tmp)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
            ctx.build_data_docs(site_names=["metarec"])
    except Exception as exc:  # noqa: BLE001 - Data Docs are a convenience, never a verdict
        logger.warning("GX Data Docs not built into %s: %s", dest, exc)


# --------------------------------------------------------------------------- public API


def validate_frames(interactions: pd.DataFrame, users: pd.DataFrame | None = None,
                    items: pd.DataFrame | None = None,
                    cfg: ValidationConfig = ValidationConfig(), spec: FeatureSpec = FeatureSpec(),
                    *, min_ratings: int = 13, max_ratings: int = 100, canonical: bool = False,
                    columns: ColumnMap = ColumnMap(), artifact_dir: str | Path | None = None,
                    now: float | None = None) -> ValidationReport:
    """Validate raw or canonical frames (columns already named canonically).

    ``canonical`` also demands the canonical dtypes (int64 ids and timestamps, float64 ratings)
    and an items ``text`` column; raw frames (strings from CSV) are checked value by value.
    ``min_ratings``/``max_ratings``: the task protocol's interactions per user (tasks section).
    ``columns`` only words messages (which source column a canonical one came from).
    ``now``: Unix seconds taken as the present (default: the clock). With ``artifact_dir``, the
    full GX result (``gx_result.json``), ``report.json`` and Data Docs HTML are written there.
    """
    t0 = time.perf_counter()
    now = time.time() if now is None else float(now)
    sources = {"user_id": columns.user_id, "item_id": columns.item_id, "rating": columns.rating,
               "timestamp": columns.timestamp, "title": columns.title}

    def prep(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.reset_index(drop=True)
        return frame.set_axis([str(c) for c in frame.columns], axis=1)

    inter, keys = _interactions(prep(interactions), cfg, canonical, now, sources)
    batches = [inter]
    for table, frame, id_col in (("users", users, "user_id"), ("items", items, "item_id")):
        if frame is None:
            continue
        text = ("title", "text") if table == "items" and canonical else (
            ("title",) if table == "items" else ())
        numeric = spec.user_numeric if table == "users" else spec.item_numeric
        others = spec.user_categorical if table == "users" else (
            *spec.item_categorical, *spec.item_multi)
        batch, ids = _entities(prep(frame), table, id_col, text, numeric, others, canonical,
                               sources)
        batches.append(batch)
        if ids is not None and id_col in keys:
            _known(inter, keys[id_col], ids, id_col, table)
    if len(keys.get("user_id", ())):
        batches.append(_task_users(keys["user_id"], cfg, min_ratings, max_ratings))
    out = Path(artifact_dir) if artifact_dir is not None else None
    results = _run_gx(batches, out, cfg.data_docs)
    failures = [f for b in batches for f in _failures(b, results[b.table], cfg.max_examples)]
    report = ValidationReport(
        passed=not failures, failures=failures,
        rows={b.table: len(b.raw) for b in batches if b.table != "interactions_per_user"},
        evaluated=sum(len(b.checks) for b in batches), seconds=time.perf_counter() - t0)
    if out is not None:
        write_json(out / REPORT_FILE, report.to_dict())
    logger.log(logging.INFO if report.passed else logging.WARNING,
               "validation %s: %d expectations, %d failed, %.1f s",
               "passed" if report.passed else "failed", report.evaluated, len(failures),
               report.seconds)
    return report


def validate_tables(tables: CanonicalTables, cfg: Config,
                    artifact_dir: str | Path | None = None,
                    now: float | None = None) -> ValidationReport:
    """Validate canonical tables (dtypes included) against ``cfg.validation`` and ``cfg.tasks``."""
    return validate_frames(tables.interactions, tables.users, tables.items, cfg.validation,
                           tables.spec, min_ratings=cfg.tasks.min_ratings,
                           max_ratings=cfg.tasks.max_ratings, canonical=True,
                           artifact_dir=artifact_dir, now=now)


def spec_from_csv(src: CsvSource) -> FeatureSpec:
    """The feature spec a generic CSV/Parquet source declares."""
    return FeatureSpec(user_categorical=src.user_categorical, user_numeric=src.user_numeric,
                       item_categorical=src.item_categorical, item_numeric=src.item_numeric,
                       item_multi=src.item_multi)


def _read_raw(path: str | Path, src: CsvSource, mapping: dict[str, str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        # Strings only, no coercion; undecodable bytes become U+FFFD so the encoding check
        # reports them by row instead of the read failing as a whole.
        frame = pd.read_csv(path, sep=src.sep, encoding=src.encoding, dtype=object,
                            keep_default_na=False, na_values=[""], encoding_errors="replace")
    else:
        raise ValueError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")
    return frame.rename(columns={s: d for d, s in mapping.items() if s in frame.columns})


def load_raw_files(interactions: str | Path, users: str | Path | None = None,
                   items: str | Path | None = None, csv_cfg: CsvSource = CsvSource()
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Read CSV/Parquet files as they are (CSV cells stay strings), columns renamed to canonical.

    Missing mapped columns are left missing: validation reports them.
    """
    c = csv_cfg.columns
    inter = _read_raw(interactions, csv_cfg, {"user_id": c.user_id, "item_id": c.item_id,
                                              "rating": c.rating, "timestamp": c.timestamp})
    user_fr = _read_raw(users, csv_cfg, {"user_id": c.user_id}) if users else None
    item_fr = _read_raw(items, csv_cfg, {"item_id": c.item_id, "title": c.title}) if items else None
    return inter, user_fr, item_fr
