"""The tasks stage: the cold-start split of the prepared tables, few-shot tasks over the
encoded features (:mod:`metarec.data.tasks`), written with a manifest that ties them to the
data, the encoders and the split (`metarec tasks build`, the ``cold_start_tasks`` asset)."""

from __future__ import annotations

import dataclasses
import logging

from metarec.config import Config
from metarec.data.arrays import FeatureArrays, TaskArrays
from metarec.data.splits import split_from_config
from metarec.data.tables import CanonicalTables, tables_fingerprint
from metarec.data.tasks import build_split_tasks, dropped_by_width, save_tasks
from metarec.features.build import load_features, read_features_manifest

log = logging.getLogger(__name__)


def build_task_sets(cfg: Config, tables: CanonicalTables,
                    features: FeatureArrays | None = None) -> dict[str, TaskArrays]:
    """The `metarec tasks build` step: split, tasks, k-shot variants -> tasks.out_dir.

    ``features`` defaults to those in features.out_dir, which must come from the same split.
    """
    from metarec.data.implicit import feedback_tables

    tables = feedback_tables(tables, cfg.data.feedback, cfg.data.implicit)
    implicit = cfg.data.implicit if cfg.data.feedback == "implicit" else None
    split = split_from_config(cfg.tasks, cfg.seed, tables)
    manifest = read_features_manifest(cfg.features.out_dir)
    if manifest.get("split_hash") != split.fingerprint():
        raise ValueError(f"features in {cfg.features.out_dir} were built for another split "
                         f"(protocol {manifest.get('protocol')!r}, seed {manifest.get('seed')}) "
                         f"than tasks.protocol={cfg.tasks.protocol!r}, seed {split.seed}; "
                         "run `metarec features build` again")
    if features is None:
        features = load_features(cfg.features.out_dir)
    width = cfg.tasks.support_width or cfg.tasks.max_ratings - cfg.tasks.query_size
    sets = build_split_tasks(split, features, query_size=cfg.tasks.query_size,
                             support_width=width, kshots=cfg.tasks.kshots,
                             implicit=implicit, interactions=tables.interactions)
    extra = {"protocol": split.protocol, "seed": split.seed, "split_hash": split.fingerprint(),
             "data_hash": tables_fingerprint(tables), "encoder_hash": manifest["encoder_hash"],
             "training": list(split.training), "validation": list(split.validation),
             "min_ratings": cfg.tasks.min_ratings, "max_ratings": cfg.tasks.max_ratings,
             "kshots": list(cfg.tasks.kshots), "dataset": tables.name,
             "feedback": cfg.data.feedback,
             "implicit": None if implicit is None else dataclasses.asdict(implicit),
             "dropped": {**split.dropped, "support_width": dropped_by_width(split, sets)}}
    log.info("dropped (rule: users, ratings): %s", extra["dropped"])
    save_tasks(sets, cfg.tasks.out_dir, extra)
    log.info("tasks (%s): %s", split.protocol,
             {n: len(t) for n, t in sets.items() if "@" not in n})
    return sets
