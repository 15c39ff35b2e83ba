"""Feature encoders: fitted on training users/items only, saved as JSON, deterministic.

Three kinds, matching :class:`metarec.data.tables.FeatureSpec` and the index conventions of
:mod:`metarec.data.arrays`:

- :class:`CategoricalEncoder`: value -> index; 0 is "unknown" (unseen at fit time, rarer than
  ``min_count``, or missing), 1.. are the training vocabulary in sorted order.
- :class:`BucketEncoder`: a numeric value -> bucket index; 0 is "missing", 1..len(edges)+1 are
  the buckets ``(-inf, e0), [e0, e1), ..., [e_last, inf)``. Edges come from params.yaml or, when
  none are configured for the column, from quantiles of the training values.
- :class:`BagEncoder`: a list of values -> a row of indices padded to a fixed width; 0 is
  padding, 1 is "unknown", 2.. are the training vocabulary in sorted order.

Values are compared as strings (``str(v)``), so a vocabulary round-trips through JSON exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

UNKNOWN = 0  # categorical / bucket index for unseen or missing values
BAG_PAD = 0  # bag index for padding
BAG_UNKNOWN = 1  # bag index for an unseen value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are never "missing" scalars
        return False


@dataclass(frozen=True)
class CategoricalEncoder:
    """Vocabulary of one categorical column; index 0 is unknown."""

    column: str
    vocabulary: tuple[str, ...]

    @classmethod
    def fit(cls, column: str, values: Iterable[Any], min_count: int = 1) -> "CategoricalEncoder":
        counts = Counter(str(v) for v in values if not _is_missing(v))
        return cls(column, tuple(sorted(v for v, c in counts.items() if c >= min_count)))

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 1

    def transform(self, values: Iterable[Any]) -> np.ndarray:
        """(N,) int64 indices in 0..cardinality-1."""
        lookup = {v: i + 1 for i, v in enumerate(self.vocabulary)}
        return np.array([UNKNOWN if _is_missing(v) else lookup.get(str(v), UNKNOWN)
                         for v in values], dtype=np.int64)


@dataclass(frozen=True)
class BucketEncoder:
    """Bucketed numeric column; index 0 is missing, buckets are 1..len(edges)+1."""

    column: str
    edges: tuple[float, ...]

    @classmethod
    def fit(cls, column: str, values: Iterable[Any], edges: Sequence[float] | None = None,
            quantiles: int = 10) -> "BucketEncoder":
        """Fixed ``edges`` if given, else the distinct inner ``quantiles``-quantiles of values."""
        if edges is not None:
            edges = [float(e) for e in edges]
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"bucket edges for '{column}' must increase strictly: {edges}")
            return cls(column, tuple(edges))
        arr = _numeric(column, values)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return cls(column, ())
        qs = np.quantile(arr, np.linspace(0, 1, quantiles + 1)[1:-1])
        return cls(column, tuple(float(q) for q in np.unique(qs)))

    @property
    def cardinality(self) -> int:
        return len(self.edges) + 2

    def transform(self, values: Iterable[Any]) -> np.ndarray:
        """(N,) int64 bucket indices; NaN/None -> 0."""
        arr = _numeric(self.column, values)
        out = np.searchsorted(np.asarray(self.edges, dtype=np.float64), arr, side="right") + 1
        out[np.isnan(arr)] = UNKNOWN
        return out.astype(np.int64)


def _numeric(column: str, values: Iterable[Any]) -> np.ndarray:
    series = pd.Series(list(values), dtype=object)
    converted = pd.to_numeric(series, errors="coerce")
    bad = series[converted.isna() & ~series.map(_is_missing)]
    if len(bad):
        raise ValueError(f"numeric column '{column}' has {len(bad)} non-numeric value(s), "
                         f"e.g. {bad.iloc[0]!r}")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


@dataclass(frozen=True)
class BagEncoder:
    """Vocabulary of one multi-valued column; 0 pads, 1 is unknown, values are 2.."""

    column: str
    vocabulary: tuple[str, ...]

    @classmethod
    def fit(cls, column: str, bags: Iterable[Iterable[Any]], min_count: int = 1) -> "BagEncoder":
        counts = Counter(str(v) for bag in bags for v in _as_bag(column, bag))
        return cls(column, tuple(sorted(v for v, c in counts.items() if c >= min_count)))

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 2

    def transform(self, bags: Iterable[Iterable[Any]], width: int | None = None) -> np.ndarray:
        """(N, L) int64, each row the bag's indices (duplicates dropped) then padding.

        ``L`` is ``width`` if given (longer bags are an error) else the longest bag (at least 1).
        """
        lookup = {v: i + 2 for i, v in enumerate(self.vocabulary)}
        rows = [list(dict.fromkeys(lookup.get(str(v), BAG_UNKNOWN) for v in _as_bag(self.column, b)))
                for b in bags]
        longest = max((len(r) for r in rows), default=0)
        if width is None:
            width = max(longest, 1)
        elif longest > width:
            raise ValueError(f"'{self.column}': a bag has {longest} values, more than width {width}")
        out = np.full((len(rows), width), BAG_PAD, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out


def _as_bag(column: str, bag: Any) -> list[Any]:
    if bag is None or (not isinstance(bag, (list, tuple, np.ndarray)) and _is_missing(bag)):
        return []
    if isinstance(bag, str) or not isinstance(bag, (list, tuple, np.ndarray)):
        raise ValueError(f"multi-valued column '{column}' must hold lists, got {bag!r}")
    return [v for v in bag if not _is_missing(v)]


@dataclass(frozen=True)
class FeatureEncoders:
    """All encoders of one dataset, in column order (user fields, item fields, item bags)."""

    user: tuple[CategoricalEncoder | BucketEncoder, ...] = ()
    item: tuple[CategoricalEncoder | BucketEncoder, ...] = ()
    item_multi: tuple[BagEncoder, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        def enc(e: Any) -> dict[str, Any]:
            kind = {CategoricalEncoder: "categorical", BucketEncoder: "bucket",
                    BagEncoder: "bag"}[type(e)]
            return {"kind": kind, **asdict(e)}
        return {"user": [enc(e) for e in self.user], "item": [enc(e) for e in self.item],
                "item_multi": [enc(e) for e in self.item_multi]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FeatureEncoders":
        kinds = {"categorical": CategoricalEncoder, "bucket": BucketEncoder, "bag": BagEncoder}

        def dec(d: dict[str, Any]) -> Any:
            d = dict(d)
            kind = d.pop("kind")
            if kind not in kinds:
                raise ValueError(f"unknown encoder kind {kind!r} for column {d.get('column')!r}")
            key = "edges" if kind == "bucket" else "vocabulary"
            return kinds[kind](d["column"], tuple(d[key]))
        return cls(tuple(dec(d) for d in raw["user"]), tuple(dec(d) for d in raw["item"]),
                   tuple(dec(d) for d in raw["item_multi"]))

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys): equal encoders give equal bytes."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "FeatureEncoders":
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """sha256 of :meth:`to_json`: the encoder hash recorded in manifests."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def fit_encoders(users: pd.DataFrame, items: pd.DataFrame, *, user_categorical: Sequence[str],
                 user_numeric: Sequence[str], item_categorical: Sequence[str],
                 item_numeric: Sequence[str], item_multi: Sequence[str],
                 bucket_edges: dict[str, Sequence[float]], quantiles: int = 10,
                 min_count: int = 1) -> FeatureEncoders:
    """Fit every encoder on the given (training) users and items rows.

    Numeric columns use ``bucket_edges[column]`` when configured, else training quantiles.
    """
    for frame, cols, what in ((users, (*user_categorical, *user_numeric), "users"),
                              (items, (*item_categorical, *item_numeric, *item_multi), "items")):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{what} table lacks feature column(s) {missing} named by the spec")
    user = tuple([CategoricalEncoder.fit(c, users[c], min_count) for c in user_categorical]
                 + [BucketEncoder.fit(c, users[c], bucket_edges.get(c), quantiles)
                    for c in user_numeric])
    item = tuple([CategoricalEncoder.fit(c, items[c], min_count) for c in item_categorical]
                 + [BucketEncoder.fit(c, items[c], bucket_edges.get(c), quantiles)
                    for c in item_numeric])
    multi = tuple(BagEncoder.fit(c, items[c], min_count) for c in item_multi)
    return FeatureEncoders(user, item, multi)
