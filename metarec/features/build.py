"""Feature build: canonical tables -> :class:`FeatureArrays` (+ the fitted encoders).

Encoders are fitted on the training side of the cold-start split only (``split.fit_user_ids``,
``split.fit_item_ids``), so a new user's unseen occupation or zip code maps to "unknown" exactly
as it would in production. Item text embeddings come from the pretrained language model for
every item (the model is not fitted, so embedding new items leaks nothing).

Artifacts in ``cfg.features.out_dir``: ``features.npz`` (arrays; bags as ``item_multi.<name>``),
``encoders.json`` and ``manifest.json`` (fields, cardinalities, data/encoder/split hashes; no
timestamps), all byte-identical for the same data, config and seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.config import DataConfig, FeaturesConfig, TasksConfig
from metarec.data.arrays import FeatureArrays
from metarec.data.npz import read_npz, write_npz
from metarec.data.splits import ColdStartSplit, split_from_config
from metarec.data.tables import CanonicalTables, tables_fingerprint
from metarec.features.encoders import FeatureEncoders, fit_encoders
from metarec.features.text import EncodeFn, embed_texts
from metarec.io import atomic_dir

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npz"
ENCODERS_FILE = "encoders.json"
MANIFEST_FILE = "manifest.json"


def _rows(table: pd.DataFrame, key: str, extra_ids: np.ndarray) -> pd.DataFrame:
    """One row per id in table[key] or extra_ids, sorted by id; ids without a row get NaNs."""
    dup = table[key].duplicated()
    if dup.any():
        raise ValueError(f"{key}: {int(dup.sum())} repeated id(s) in the table, "
                         f"e.g. {table.loc[dup, key].iloc[0]}")
    ids = np.union1d(table[key].to_numpy(dtype=np.int64), extra_ids.astype(np.int64))
    return pd.DataFrame({key: ids}).merge(table, on=key, how="left", validate="one_to_one")


def item_texts(items: pd.DataFrame) -> list[str]:
    """The language-model text of each item: ``text``, else ``title``, else empty."""
    for col in ("text", "title"):
        if col in items.columns:
            return [t if isinstance(t, str) else "" for t in items[col]]
    return [""] * len(items)


def build_features(tables: CanonicalTables, split: ColdStartSplit, cfg: FeaturesConfig,
                   encode_fn: EncodeFn | None = None) -> tuple[FeatureArrays, FeatureEncoders]:
    """Encode every user and item; encoders fitted on the split's training users/items only.

    Rows: all users (items) of the users (items) table or the interactions, sorted by id.
    ``encode_fn`` replaces the language model (tests); otherwise ``cfg.text_model`` runs.
    """
    spec = tables.spec
    users = _rows(tables.users, "user_id", tables.interactions["user_id"].to_numpy())
    items = _rows(tables.items, "item_id", tables.interactions["item_id"].to_numpy())
    encoders = fit_encoders(
        users[users["user_id"].isin(split.fit_user_ids)],
        items[items["item_id"].isin(split.fit_item_ids)],
        user_categorical=spec.user_categorical, user_numeric=spec.user_numeric,
        item_categorical=spec.item_categorical, item_numeric=spec.item_numeric,
        item_multi=spec.item_multi, bucket_edges=cfg.bucket_edges,
        quantiles=cfg.numeric_quantiles, min_count=cfg.min_count)

    def stack(frame: pd.DataFrame, encs: tuple) -> np.ndarray:
        cols = [e.transform(frame[e.column]) for e in encs]
        return np.stack(cols, axis=1) if cols else np.zeros((len(frame), 0), dtype=np.int64)

    texts = item_texts(items)
    if not all(texts):
        log.warning("%d items have no text; they are embedded as empty strings",
                    sum(not t for t in texts))
    text = embed_texts(texts, cfg.text_model, cfg.cache_dir, cfg.text_batch_size,
                       cfg.text_device, cfg.text_normalize, encode_fn=encode_fn)
    features = FeatureArrays(
        user_ids=users["user_id"].to_numpy(dtype=np.int64),
        item_ids=items["item_id"].to_numpy(dtype=np.int64),
        user_cat=stack(users, encoders.user),
        user_fields=tuple(e.column for e in encoders.user),
        user_cardinality=tuple(e.cardinality for e in encoders.user),
        item_cat=stack(items, encoders.item),
        item_fields=tuple(e.column for e in encoders.item),
        item_cardinality=tuple(e.cardinality for e in encoders.item),
        item_multi={e.column: e.transform(items[e.column]) for e in encoders.item_multi},
        item_multi_cardinality={e.column: e.cardinality for e in encoders.item_multi},
        item_text=text)
    return features, encoders


def save_features(features: FeatureArrays, encoders: FeatureEncoders, dest: str | Path,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write features.npz, encoders.json and manifest.json into ``dest``, atomically."""
    arrays = {"user_ids": features.user_ids, "item_ids": features.item_ids,
              "user_cat": features.user_cat, "item_cat": features.item_cat}
    arrays.update({f"item_multi.{k}": v for k, v in features.item_multi.items()})
    if features.item_text is not None:
        arrays["item_text"] = features.item_text.astype(np.float32)
    manifest = {
        "users": len(features.user_ids), "items": len(features.item_ids),
        "user_fields": list(features.user_fields),
        "user_cardinality": list(features.user_cardinality),
        "item_fields": list(features.item_fields),
        "item_cardinality": list(features.item_cardinality),
        "item_multi_fields": list(features.item_multi),
        "item_multi_cardinality": dict(features.item_multi_cardinality),
        "text_dim": None if features.item_text is None else int(features.item_text.shape[1]),
        "encoder_hash": encoders.fingerprint(), **(extra or {})}
    with atomic_dir(dest) as tmp:
        write_npz(tmp / FEATURES_FILE, arrays)
        (tmp / ENCODERS_FILE).write_text(encoders.to_json(), encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8")
    return Path(dest)


def read_features_manifest(src: str | Path) -> dict[str, Any]:
    path = Path(src) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec features build` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_features(src: str | Path) -> FeatureArrays:
    """Read the :class:`FeatureArrays` written by :func:`save_features`."""
    manifest = read_features_manifest(src)
    arrays = read_npz(Path(src) / FEATURES_FILE)
    return FeatureArrays(
        user_ids=arrays["user_ids"], item_ids=arrays["item_ids"], user_cat=arrays["user_cat"],
        user_fields=tuple(manifest["user_fields"]),
        user_cardinality=tuple(manifest["user_cardinality"]),
        item_cat=arrays["item_cat"], item_fields=tuple(manifest["item_fields"]),
        item_cardinality=tuple(manifest["item_cardinality"]),
        item_multi={k: arrays[f"item_multi.{k}"] for k in manifest["item_multi_fields"]},
        item_multi_cardinality=dict(manifest["item_multi_cardinality"]),
        item_text=arrays.get("item_text"))


def load_encoders(src: str | Path) -> FeatureEncoders:
    return FeatureEncoders.from_json((Path(src) / ENCODERS_FILE).read_text(encoding="utf-8"))


def prepare_features(features_cfg: FeaturesConfig, tasks_cfg: TasksConfig, seed: int,
                     tables: CanonicalTables, encode_fn: EncodeFn | None = None,
                     data: DataConfig | None = None) -> FeatureArrays:
    """The `metarec features build` step: split (``tasks`` section and ``seed``), fit, encode,
    embed, write to ``features.out_dir``. ``data``: its ``feedback`` mode decides which
    interactions the split sees (implicit: the positives, metarec.data.implicit)."""
    if data is not None:
        from metarec.data.implicit import feedback_tables
        tables = feedback_tables(tables, data.feedback, data.implicit)
    split = split_from_config(tasks_cfg, seed, tables)
    features, encoders = build_features(tables, split, features_cfg, encode_fn)
    extra = {"data_hash": tables_fingerprint(tables), "split_hash": split.fingerprint(),
             "protocol": split.protocol, "seed": split.seed,
             "text_model": features_cfg.text_model, "dataset": tables.name}
    save_features(features, encoders, features_cfg.out_dir, extra)
    log.info("features: %d users x %d fields, %d items x %d fields (+%s), text dim %s -> %s",
             features.user_cat.shape[0], features.user_cat.shape[1], features.item_cat.shape[0],
             features.item_cat.shape[1], list(features.item_multi),
             None if features.item_text is None else features.item_text.shape[1],
             features_cfg.out_dir)
    return features
