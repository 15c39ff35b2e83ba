"""New items from a file: the dataset's items contract, then their catalog rows.

``metarec items add --items new_items.csv`` reads the file with the dataset's column mapping
(``data.csv``: ``columns.item_id``, ``columns.title``, the separator, the encoding, the
multi-value separator), checks it with the Great Expectations items suite the dataset's items
table passes (:func:`metarec.data.validation.validate_frames`, items only), converts it to
canonical items as the dataset's reader does, encodes the attributes with the export's own
item encoders, embeds the texts with the language model the model was trained with, and runs
``item_encoder.onnx``. Any failing row stops everything before a catalog is written; the
error names the file, the check, the offending values and their lines (the header is line 1).

The item text is the file's ``text`` column when it has one; otherwise it is built as the
dataset's reader builds it: MovieLens ("Title. Genres: A, B. Year: 1995.") or, for a CSV
source, the title joined with the ``data.csv.item_text`` columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from metarec.config import DataConfig, FeaturesConfig, ValidationConfig
from metarec.data.tables import DataSourceError, FeatureSpec

log = logging.getLogger(__name__)

MOVIELENS = ("ml-100k", "ml-1m")


class ItemsError(ValueError):
    """A new-items file that breaks the items contract; nothing was written."""


@dataclass(frozen=True)
class NewItems:
    """Canonical new items: ids (N,), titles, texts and the feature columns by name."""

    frame: pd.DataFrame

    @property
    def ids(self) -> np.ndarray:
        return self.frame["item_id"].to_numpy(np.int64)

    @property
    def titles(self) -> list[str]:
        return self.frame["title"].tolist()

    @property
    def texts(self) -> list[str]:
        return self.frame["text"].tolist()


def spec_of(encoders: Mapping[str, Any]) -> FeatureSpec:
    """The items' feature columns by kind, as the export's item encoders encode them."""
    return FeatureSpec(
        item_categorical=tuple(e["column"] for e in encoders["item"] if e["kind"] == "categorical"),
        item_numeric=tuple(e["column"] for e in encoders["item"] if e["kind"] == "bucket"),
        item_multi=tuple(e["column"] for e in encoders["item_multi"]))


def _read(path: Path, data: DataConfig) -> Any:
    """The file as it is (a :class:`metarec.data.files.TableFile`: CSV cells stay strings),
    read as the dataset's reader reads its items file (its own separator and id column), id
    and title columns named canonically."""
    import dataclasses

    from metarec.data.files import file_sep, id_columns, read_table

    src = data.csv
    table = read_table(path, file_sep(src, "items"), src.encoding)
    frame = table.frame.rename(columns={id_columns(src)[1]: "item_id",
                                        src.columns.title: "title"})
    return dataclasses.replace(table, frame=frame)


def check_items(table: Any, spec: FeatureSpec, validation: ValidationConfig,
                data: DataConfig) -> None:
    """The dataset's GX items suite on the file ``table`` (raw cells); :class:`ItemsError`
    naming each failed check, its values and the file's lines."""
    from metarec.data.validation import validate_frames

    empty = pd.DataFrame({c: pd.Series([], dtype=object)
                          for c in ("user_id", "item_id", "rating", "timestamp")})
    # The suite of the items table alone: the interactions batch is empty (its own failures,
    # such as "not empty", are not this file's, nor is the validator's verdict on them).
    validator = logging.getLogger("metarec.data.validation")
    level = validator.level
    validator.setLevel(logging.ERROR)
    try:
        report = validate_frames(empty, items=table.frame, cfg=validation, spec=spec,
                                 columns=data.csv.columns, origins={"items": table})
    finally:
        validator.setLevel(level)
    failures = [f for f in report.failures if f.table == "items"]
    log.info("%s: items contract, %d row(s), %d check(s) failed", table.path, len(table.frame),
             len(failures))
    if failures:
        lines = [f"{table.path}: {len(failures)} check(s) of the items contract failed; "
                 "nothing was written:"]
        for f in failures:
            at = f" ({', '.join(f.where)})" if f.where else ""
            lines.append(f"  {f.expectation} ({f.column or 'table'}): {f.message}; e.g. "
                         f"{f.examples}{at}")
        raise ItemsError("\n".join(lines))


def canonical_items(frame: pd.DataFrame, spec: FeatureSpec, data: DataConfig) -> NewItems:
    """Checked raw items -> canonical ones (the conversion of the dataset's reader; a test
    holds it equal to :func:`metarec.data.sources.read_csv_source` on the same file)."""
    from metarec.data.sources import ML_GENRES, item_text

    out = pd.DataFrame({"item_id": pd.to_numeric(frame["item_id"].astype(str).str.strip())
                        .astype("int64"),
                        "title": frame["title"].fillna("").astype(str).str.strip()})
    for c in spec.item_categorical:
        out[c] = frame[c].astype("str").str.strip()
    for c in spec.item_numeric:
        out[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    for c in spec.item_multi:
        out[c] = [[v.strip() for v in str(cell).split(data.csv.multi_sep) if v.strip()]
                  if isinstance(cell, str) else [] for cell in frame[c]]
    if "text" in frame.columns:
        out["text"] = frame["text"].fillna("").astype(str)
    elif data.dataset in MOVIELENS:
        order = {g: i for i, g in enumerate(ML_GENRES)}
        genres = [sorted(set(g), key=lambda x: (order.get(x, len(order)), x))
                  for g in (out["genres"] if "genres" in out else [[]] * len(out))]
        years = out["year"] if "year" in out else [None] * len(out)
        out["text"] = [item_text(t, g, None if pd.isna(y) else int(y))
                       for t, g, y in zip(out["title"], genres, years)]
    else:
        extra = [frame[c].fillna("").astype(str) if c in frame else pd.Series([""] * len(frame))
                 for c in data.csv.item_text]
        out["text"] = [". ".join(p for p in (t, *rest) if p) + "."
                       for t, *rest in zip(out["title"], *extra)]
    return NewItems(out.astype({"title": "str", "text": "str"}))


def read_new_items(path: str | Path, encoders: Mapping[str, Any], data: DataConfig,
                   validation: ValidationConfig) -> NewItems:
    """The new items of ``path``, checked against the items contract (see module doc)."""
    path = Path(path)
    try:
        table = _read(path, data)
    except DataSourceError as exc:
        raise ItemsError(f"{exc}; nothing was written") from None
    spec = spec_of(encoders)
    check_items(table, spec, validation, data)
    return canonical_items(table.frame, spec, data)


def encoder_feed(items: NewItems, encoders: Mapping[str, Any], inputs: list[str],
                 text_vectors: np.ndarray | None) -> dict[str, np.ndarray]:
    """The item encoder's feed: attributes through the export's encoders, the text vectors."""
    from metarec.features.encoders import FeatureEncoders

    enc = FeatureEncoders.from_dict({"user": [], "item": encoders["item"],
                                     "item_multi": encoders["item_multi"]})
    n = len(items.frame)
    cols = [e.transform(items.frame[e.column]) for e in enc.item]
    feed = {"item_cat": np.stack(cols, 1) if cols else np.zeros((n, 0), np.int64)}
    for e in enc.item_multi:
        feed[f"item_bag_{e.column}"] = e.transform(items.frame[e.column])
    if text_vectors is not None:
        feed["item_text"] = np.asarray(text_vectors, np.float32)
    missing = [i for i in inputs if i not in feed]
    if missing:
        raise ValueError(f"the item encoder needs {missing}, which the export's encoders or "
                         "text model do not provide")
    return {i: feed[i] for i in inputs}


def embed_new_texts(items: NewItems, text: Mapping[str, Any] | None,
                    features: FeaturesConfig) -> np.ndarray | None:
    """The texts' language-model embeddings, with the model (and normalisation) the export
    names; the configured cache and device. None when the model has no text input."""
    from metarec.features.text import embed_texts

    if text is None:
        return None
    if text["model"] != features.text_model:
        log.warning("the model was trained on texts embedded by %s; features.text_model is %s: "
                    "embedding with %s", text["model"], features.text_model, text["model"])
    return embed_texts(items.texts, text["model"], features.cache_dir, features.text_batch_size,
                       features.text_device, bool(text.get("normalize", True)))
