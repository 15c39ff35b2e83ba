"""Data contracts: one Great Expectations 1.x suite per table, run before anything is built.

Suites are built from the canonical schema (metarec.data.tables), the ``validation`` section of
params.yaml and the task protocol (``tasks.min_ratings``/``max_ratings``). They run on *raw*
frames (strings straight from a CSV, ids with whitespace, ratings like ``"five"``) as well as on
canonical tables, so bad data is caught before or while it is coerced. Checks GX cannot state
directly (id syntax and int64 range, referential integrity, mojibake, users eligible for tasks)
are computed with pandas into derived columns (``_item_id_known``...) that GX expectations then
check, so every verdict appears in one GX result (the checks: metarec.data.validation_suites).

Files (`metarec data validate --interactions F`) are read by :mod:`metarec.data.files`:
failures then name the file the user gave and the 1-based lines of the offending rows (the
header is line 1), and the report's hints say when bytes were not valid in the declared
encoding or a header looks split by another separator. Whatever the cells hold, the outcome is
a report (passed or failed) or a :class:`~metarec.data.tables.DataSourceError` naming the file
(binary, unreadable): never an exception from pandas or GX internals.

Public API: :func:`validate_frames`, :func:`validate_files`, :func:`validate_tables`,
:func:`load_raw_files`, :func:`raise_if_failed`, :class:`ValidationReport`. GX is imported
lazily (its import is ~4 s).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from metarec.config import ColumnMap, CsvSource, TasksConfig, ValidationConfig
from metarec.data.files import TableFile, read_raw_files
from metarec.data.tables import CanonicalTables, FeatureSpec
from metarec.data.validation_suites import (Batch, _missing, _text, add_known, entity_batch,
                                            interactions_batch, task_users_batch)
from metarec.io import atomic_dir, write_json

logger = logging.getLogger(__name__)

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
    """One failed expectation. ``failing_count`` is a row count, or None for table-level ones.
    ``file``: the file the table was read from (as the user gave it), if any; ``where``: the
    first failing rows, as ``"line N"`` of that file (header = line 1) or ``"row N"`` (from 1)."""

    table: str
    expectation: str
    column: str | None
    failing_count: int | None
    examples: list[Any]
    message: str
    file: str | None = None
    where: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """The verdict of all suites: ``passed`` is true only when no expectation failed."""

    passed: bool
    failures: list[Failure] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    evaluated: int = 0
    seconds: float = 0.0
    # What reading the files noticed (invalid bytes, a separator that looks wrong), per file.
    hints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": [asdict(f) for f in self.failures],
                "rows": dict(self.rows), "evaluated": self.evaluated,
                "seconds": round(self.seconds, 3), "hints": list(self.hints)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        """Plain text: one line per failure (table, expectation, count, examples)."""
        head = (f"validation {'passed' if self.passed else 'FAILED'}: {self.evaluated} "
                f"expectations, {len(self.failures)} failed; rows {self.rows}")
        lines = [head]
        if any(f.where and f.where[0].startswith("line") for f in self.failures):
            lines.append("  (line N: the line of the file, its header being line 1)")
        for f in self.failures:
            count = "-" if f.failing_count is None else str(f.failing_count)
            eg = f"; e.g. {f.examples}" if f.examples and f.examples != f.where else ""
            at = f" at {', '.join(f.where)}" if f.where else ""
            src = (f" of {f.file}" if f.where else f" ({f.file})") if f.file else ""
            lines.append(f"  [{f.table}] {f.expectation} ({f.column or 'table'}): "
                         f"{count} failing; {f.message}{eg}{at}{src}")
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = [f"**Validation {'passed' if self.passed else 'failed'}** "
                f"({self.evaluated} expectations, {len(self.failures)} failed)", ""]
        if self.failures:
            rows += ["| table | expectation | column | failing | examples | message | where |",
                     "|---|---|---|---|---|---|---|"]
            for f in self.failures:
                count = "-" if f.failing_count is None else str(f.failing_count)
                ex = ", ".join(str(e) for e in f.examples).replace("|", "\\|")
                msg = f.message.replace("|", "\\|")
                where = (", ".join(f.where) + (f" of {f.file}" if f.file else "")).strip()
                rows.append(f"| {f.table} | {f.expectation} | {f.column or ''} | {count} | "
                            f"{ex} | {msg} | {where.replace('|', chr(92) + '|')} |")
        rows += [f"- hint: {h}" for h in self.hints]
        return "\n".join(rows) + "\n"


def raise_if_failed(report: ValidationReport) -> ValidationReport:
    """Return ``report`` if it passed, else raise :class:`DataValidationError` with its text."""
    if not report.passed:
        raise DataValidationError(report)
    return report


# --------------------------------------------------------------------------- running GX


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # JSON has no infinity
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return _text(v)  # JSON (and str()) refuse ints of thousands of digits
    if isinstance(v, (bool, int, float, str)):
        return v
    try:
        return repr(v)  # bytes as b'\xff...', dates, dicts...
    except ValueError:
        return _text(v)


def _where(b: Batch, origin: TableFile | None, idx: list[int], limit: int) -> list[str]:
    rows = [i for i in (idx or []) if isinstance(i, (int, np.integer)) and 0 <= i < len(b.raw)]
    rows = rows[:limit]
    return origin.where(rows) if origin is not None else [f"row {int(i) + 1}" for i in rows]


def _examples(b: Batch, res: dict, columns: tuple[str, ...], limit: int,
              where: list[str]) -> list[Any]:
    idx = res.get("partial_unexpected_index_list")
    if idx and columns and all(c in b.raw.columns for c in columns):
        rows = b.raw.loc[[i for i in idx if i in b.raw.index], list(columns)]
        values = rows.iloc[:, 0].tolist() if len(columns) == 1 else \
            [tuple(r) for r in rows.itertuples(index=False)]
    else:
        values = res.get("partial_unexpected_list") or (
            [res["observed_value"]] if res.get("observed_value") is not None else [])
    values = [_jsonable(v) for v in values]
    if where and values and all(v is None for v in values):  # nulls: name the rows
        values = list(where)
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out[:limit]


def _failures(b: Batch, result: Any, limit: int, origin: TableFile | None) -> list[Failure]:
    checks = {c.expectation.meta["metarec_check"]: c for c in b.checks}
    table = "interactions" if b.table == "interactions_per_user" else b.table
    file = str(origin.path) if origin is not None else None
    out = [Failure(table, name, col, None, [], message, file) for name, col, message in b.problems]
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
        where = _where(b, origin, res.get("partial_unexpected_index_list"), limit)
        out.append(Failure(table, check.name, check.column, count,
                           _examples(b, res, check.columns, limit, where), message, file, where))
    return out


def _safe_cell(v: Any) -> Any:
    if _missing(v):
        return None
    if isinstance(v, (bool, float, np.number)) or (isinstance(v, int) and abs(v) < 2**64):
        return v
    text = v if isinstance(v, str) else _text(v)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates
        return text.encode("utf-8", "replace").decode("utf-8")


def _gx_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GX gets: object cells as None, numbers or UTF-8-encodable text. GX hashes the
    whole frame (pandas' hash_pandas_object), which fails on non-ASCII bytes, lists and lone
    surrogates; every check GX runs on raw columns (exists, not null, dtype) reads the same."""
    out = frame.copy()
    for col in out.columns[out.dtypes == object]:
        out[col] = pd.Series([_safe_cell(v) for v in out[col]], index=out.index, dtype=object)
    return out


def ephemeral_context() -> Any:
    """A GX context with in-memory stores, no default temporary docs site, no analytics and
    no progress bars (the data contracts and the feedback events contract alike)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig,
                                                            InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    return gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False)))


def _run_gx(batches: list[Batch], artifact_dir: Path | None, data_docs: bool) -> dict[str, Any]:
    """Run one suite per batch in an ephemeral GX context; keep the full results if asked."""
    import great_expectations as gx

    ctx = ephemeral_context()
    source = ctx.data_sources.add_pandas("metarec")
    results = {}
    for b in batches:
        batch_def = source.add_dataframe_asset(b.table).add_batch_definition_whole_dataframe(
            b.table)
        suite = ctx.suites.add(gx.ExpectationSuite(
            name=b.table, expectations=[c.expectation for c in b.checks]))
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=b.table, data=batch_def, suite=suite))
        own = b.frame.drop(columns=[c for c in b.derived if c in b.frame.columns])
        frame = _gx_safe(pd.concat([own, pd.DataFrame(b.derived, index=b.frame.index)], axis=1))
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
                                  "base_directory": str(tmp.resolve())},
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
                    now: float | None = None, timed: bool = True,
                    origins: Mapping[str, TableFile] | None = None) -> ValidationReport:
    """Validate raw or canonical frames (columns already named canonically).

    ``canonical`` also demands the canonical dtypes (int64 ids and timestamps, float64 ratings)
    and an items ``text`` column; raw frames (strings from CSV) are checked value by value.
    ``min_ratings``/``max_ratings``: the task protocol's interactions per user (tasks section).
    ``columns`` only words messages (which source column a canonical one came from).
    ``now``: Unix seconds taken as the present (default: the clock). ``timed`` false: the
    interactions carry no time (no timestamp column in raw frames; row order in canonical
    ones), so timestamps are not range-checked. ``origins``: the file each table was read from
    (:func:`validate_files`), so failures name it and its lines. With ``artifact_dir``, the
    full GX result (``gx_result.json``), ``report.json`` and Data Docs HTML are written there.
    """
    for name, frame in (("interactions", interactions), ("users", users), ("items", items)):
        if not isinstance(frame, pd.DataFrame) and not (frame is None and name != "interactions"):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    t0 = time.perf_counter()
    now = time.time() if now is None else float(now)
    origins = dict(origins or {})
    batches, hints = plan_batches(interactions, users, items, cfg, spec, min_ratings=min_ratings,
                                  max_ratings=max_ratings, canonical=canonical, columns=columns,
                                  now=now, timed=timed, origins=origins)
    out = Path(artifact_dir) if artifact_dir is not None else None
    results = _run_gx(batches, out, cfg.data_docs)
    failures = [f for b in batches for f in _failures(
        b, results[b.table], cfg.max_examples,  # per-user counts come from the interactions
        origins.get("interactions" if b.table == "interactions_per_user" else b.table))]
    report = ValidationReport(
        passed=not failures, failures=failures,
        rows={b.table: len(b.raw) for b in batches if b.table != "interactions_per_user"},
        evaluated=sum(len(b.checks) for b in batches), seconds=time.perf_counter() - t0,
        hints=hints)
    if out is not None:
        write_json(out / REPORT_FILE, report.to_dict())
    logger.log(logging.INFO if report.passed else logging.WARNING,
               "validation %s: %d expectations, %d failed, %.1f s",
               "passed" if report.passed else "failed", report.evaluated, len(failures),
               report.seconds)
    return report


def _prep(frame: pd.DataFrame, table: str, problems: list[tuple[str, str | None, str]]
          ) -> pd.DataFrame:
    """Index 0..n-1, string column names; a repeated name keeps its first column and fails
    "unique column names" (a source column mapped onto a name the file already has...)."""
    frame = frame.reset_index(drop=True)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    repeated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if repeated:
        problems += [("unique column names", c, f"column '{c}' appears "
                      f"{int((frame.columns == c).sum())} times in {table} (after mapping the "
                      "source columns); the first one is checked") for c in repeated]
        frame = frame.loc[:, ~frame.columns.duplicated()]
    return frame


def plan_batches(interactions: pd.DataFrame, users: pd.DataFrame | None,
                 items: pd.DataFrame | None, cfg: ValidationConfig, spec: FeatureSpec, *,
                 min_ratings: int, max_ratings: int, canonical: bool, columns: ColumnMap,
                 now: float, timed: bool = True, origins: Mapping[str, TableFile] | None = None
                 ) -> tuple[list[Batch], list[str]]:
    """Every table's derived check columns and planned expectations (pandas only, GX not run
    yet), plus the hints of the files they came from."""
    origins = dict(origins or {})
    hints = [h for o in origins.values() for h in o.hints]
    sources = {"user_id": columns.user_id, "item_id": columns.item_id, "rating": columns.rating,
               "timestamp": columns.timestamp or "timestamp", "title": columns.title}

    def hint_of(table: str) -> str:
        origin = origins.get(table)
        return origin.sep_hint if origin else ""

    problems: list[tuple[str, str | None, str]] = []
    inter, keys = interactions_batch(_prep(interactions, "interactions", problems), cfg,
                                     canonical, now, sources, timed=timed,
                                     hint=hint_of("interactions"))
    inter.problems += problems
    batches = [inter]
    for table, frame, id_col in (("users", users, "user_id"), ("items", items, "item_id")):
        if frame is None:
            continue
        text = ("title", "text") if table == "items" and canonical else (
            ("title",) if table == "items" else ())
        numeric = spec.user_numeric if table == "users" else spec.item_numeric
        others = spec.user_categorical if table == "users" else (
            *spec.item_categorical, *spec.item_multi)
        problems = []
        batch, ids = entity_batch(_prep(frame, table, problems), table, id_col, text, numeric,
                                  others, canonical, sources, hint=hint_of(table))
        batch.problems += problems
        batches.append(batch)
        if ids is not None and id_col in keys:
            add_known(inter, keys[id_col], ids, id_col, table)
    if len(keys.get("user_id", ())):
        batches.append(task_users_batch(keys["user_id"], cfg, min_ratings, max_ratings))
    return batches, hints


def validate_tables(tables: CanonicalTables, validation_cfg: ValidationConfig,
                    tasks_cfg: TasksConfig, artifact_dir: str | Path | None = None,
                    now: float | None = None) -> ValidationReport:
    """Validate canonical tables (dtypes included) against the ``validation`` contracts and the
    ``tasks`` section's ratings-per-user window."""
    return validate_frames(tables.interactions, tables.users, tables.items, validation_cfg,
                           tables.spec, min_ratings=tasks_cfg.min_ratings,
                           max_ratings=tasks_cfg.max_ratings, canonical=True,
                           artifact_dir=artifact_dir, now=now,
                           timed=tables.timestamps == "unix")


def spec_from_csv(src: CsvSource) -> FeatureSpec:
    """The feature spec a generic CSV/Parquet source declares."""
    return FeatureSpec(user_categorical=src.user_categorical, user_numeric=src.user_numeric,
                       item_categorical=src.item_categorical, item_numeric=src.item_numeric,
                       item_multi=src.item_multi)


def load_raw_files(interactions: str | Path, users: str | Path | None = None,
                   items: str | Path | None = None, csv_cfg: CsvSource = CsvSource()
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """The frames of :func:`read_raw_files` (interactions, users or None, items or None)."""
    files = read_raw_files(interactions, users, items, csv_cfg)
    return tuple(files[t].frame if t in files else None  # type: ignore[return-value]
                 for t in ("interactions", "users", "items"))


def validate_files(interactions: str | Path, users: str | Path | None = None,
                   items: str | Path | None = None, csv_cfg: CsvSource = CsvSource(),
                   cfg: ValidationConfig = ValidationConfig(), *, min_ratings: int = 13,
                   max_ratings: int = 100, artifact_dir: str | Path | None = None,
                   now: float | None = None) -> ValidationReport:
    """Read and validate a user's files (mapped by ``data.csv``): failures name each file and
    the lines of the offending rows; ``data.csv.columns.timestamp: null`` skips time checks."""
    files = read_raw_files(interactions, users, items, csv_cfg)
    frames = [files[t].frame if t in files else None for t in ("interactions", "users", "items")]
    return validate_frames(*frames, cfg, spec_from_csv(csv_cfg), min_ratings=min_ratings,
                           max_ratings=max_ratings, columns=csv_cfg.columns,
                           artifact_dir=artifact_dir, now=now,
                           timed=csv_cfg.columns.timestamp is not None, origins=files)
