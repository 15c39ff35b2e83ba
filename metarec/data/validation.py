"""Data contracts: one Great Expectations 1.x suite per table, run before anything is built.

Suites are built from the canonical schema (metarec.data.tables), the ``validation`` section of
params.yaml and the task protocol (``tasks.min_ratings``/``max_ratings``). They run on *raw*
frames (strings straight from a CSV, ids with whitespace, ratings like ``"five"``) as well as on
canonical tables, so bad data is caught before or while it is coerced. Checks GX cannot state
directly (id syntax and int64 range, referential integrity, mojibake, users eligible for tasks)
are computed with pandas into derived columns (``_item_id_known``...) that GX expectations then
check, so every verdict appears in one GX result (the checks: metarec.data.validation_suites).

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
from typing import Any

import numpy as np
import pandas as pd

from metarec.config import ColumnMap, CsvSource, TasksConfig, ValidationConfig
from metarec.data.tables import CanonicalTables, FeatureSpec
from metarec.data.validation_suites import (Batch, add_known, entity_batch, interactions_batch,
                                            task_users_batch)
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


def _examples(b: Batch, res: dict, columns: tuple[str, ...], limit: int) -> list[Any]:
    idx = res.get("partial_unexpected_index_list")
    if idx and columns and all(c in b.raw.columns for c in columns):
        rows = b.raw.loc[[i for i in idx if i in b.raw.index], list(columns)]
        values = rows.iloc[:, 0].tolist() if len(columns) == 1 else \
            [tuple(r) for r in rows.itertuples(index=False)]
    else:
        values = res.get("partial_unexpected_list") or (
            [res["observed_value"]] if res.get("observed_value") is not None else [])
    if idx and values and all(v is None or v != v for v in values):  # nulls: name the rows
        values = [f"row {i}" for i in idx]
    out: list[Any] = []
    for v in map(_jsonable, values):
        if v not in out:
            out.append(v)
    return out[:limit]


def _failures(b: Batch, result: Any, limit: int) -> list[Failure]:
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


def _run_gx(batches: list[Batch], artifact_dir: Path | None, data_docs: bool) -> dict[str, Any]:
    """Run one suite per batch in an ephemeral GX context; keep the full results if asked."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig,
                                                            InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    # In-memory stores, no default temporary docs site, no analytics, no progress bars.
    ctx = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False)))
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
                    now: float | None = None) -> ValidationReport:
    """Validate raw or canonical frames (columns already named canonically).

    ``canonical`` also demands the canonical dtypes (int64 ids and timestamps, float64 ratings)
    and an items ``text`` column; raw frames (strings from CSV) are checked value by value.
    ``min_ratings``/``max_ratings``: the task protocol's interactions per user (tasks section).
    ``columns`` only words messages (which source column a canonical one came from).
    ``now``: Unix seconds taken as the present (default: the clock). With ``artifact_dir``, the
    full GX result (``gx_result.json``), ``report.json`` and Data Docs HTML are written there.
    """
    for name, frame in (("interactions", interactions), ("users", users), ("items", items)):
        if not isinstance(frame, pd.DataFrame) and not (frame is None and name != "interactions"):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    t0 = time.perf_counter()
    now = time.time() if now is None else float(now)
    sources = {"user_id": columns.user_id, "item_id": columns.item_id, "rating": columns.rating,
               "timestamp": columns.timestamp, "title": columns.title}

    def prep(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.reset_index(drop=True)
        return frame.set_axis([str(c) for c in frame.columns], axis=1)

    inter, keys = interactions_batch(prep(interactions), cfg, canonical, now, sources)
    batches = [inter]
    for table, frame, id_col in (("users", users, "user_id"), ("items", items, "item_id")):
        if frame is None:
            continue
        text = ("title", "text") if table == "items" and canonical else (
            ("title",) if table == "items" else ())
        numeric = spec.user_numeric if table == "users" else spec.item_numeric
        others = spec.user_categorical if table == "users" else (
            *spec.item_categorical, *spec.item_multi)
        batch, ids = entity_batch(prep(frame), table, id_col, text, numeric, others,
                                  canonical, sources)
        batches.append(batch)
        if ids is not None and id_col in keys:
            add_known(inter, keys[id_col], ids, id_col, table)
    if len(keys.get("user_id", ())):
        batches.append(task_users_batch(keys["user_id"], cfg, min_ratings, max_ratings))
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


def validate_tables(tables: CanonicalTables, validation_cfg: ValidationConfig,
                    tasks_cfg: TasksConfig, artifact_dir: str | Path | None = None,
                    now: float | None = None) -> ValidationReport:
    """Validate canonical tables (dtypes included) against the ``validation`` contracts and the
    ``tasks`` section's ratings-per-user window."""
    return validate_frames(tables.interactions, tables.users, tables.items, validation_cfg,
                           tables.spec, min_ratings=tasks_cfg.min_ratings,
                           max_ratings=tasks_cfg.max_ratings, canonical=True,
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
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ValueError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            # Strings only, no coercion; undecodable bytes become U+FFFD so the encoding check
            # reports them by row instead of the read failing as a whole.
            frame = pd.read_csv(path, sep=src.sep, encoding=src.encoding, dtype=object,
                                keep_default_na=False, na_values=[""], encoding_errors="replace")
    except (ValueError, OSError) as exc:  # pandas ParserError, pyarrow ArrowInvalid
        raise ValueError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
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
