"""Warm starts: the registry's champion's meta-parameters as the starting point of a model built
on new data (``train.init_from: champion``), and the champion rebuilt on new data for the gate.

A registered version carries, beside its export, ``training/meta_model.pt`` (the model's and
the learner's state_dicts), ``training/encoders.json`` and ``training/params.json`` (its
configuration), all under the version's sha256 digests. New data brings new values (a new zip
code, a new genre) and refitted encoders, so an embedding row is carried over *by value*: the
row a value had in the champion goes to the row that value has now; a value the champion never
saw starts from the champion's "unknown" row; item-id embeddings follow the item ids. Buffers
(feature tables, item statistics) are data and are rebuilt from the new data. Every other
parameter, and the learner's, must have the champion's shape exactly: a different
architecture (embedding size, hidden widths, feature columns, text model, learner) is a
:class:`WarmStartError` naming the parameter and both shapes, never a silent cold start.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from metarec.config import TrackingConfig
from metarec.features.encoders import (BagEncoder, BucketEncoder, CategoricalEncoder,
                                       FeatureEncoders)

log = logging.getLogger(__name__)

TRAINING_DIR = "training"
STATE_FILE = "meta_model.pt"
ENCODERS_FILE = "encoders.json"
PARAMS_FILE = "params.json"
_ROWS = re.compile(r"^(user_emb|item_emb)\.(\d+)\.weight$|^bag_emb\.(.+)\.weight$|^id_emb\.weight$")


class WarmStartError(RuntimeError):
    """The champion cannot start (or be rebuilt on) this model; the message says why."""


@dataclass
class ChampionState:
    """What a registered version holds for warm starts and re-evaluation."""

    version: int
    model_state: dict[str, Tensor]
    learner_state: dict[str, Tensor]
    encoders: FeatureEncoders
    item_ids: list[int]
    params: dict[str, Any]
    sha256: str
    notes: list[str] = field(default_factory=list)


def load_champion(cfg: TrackingConfig) -> ChampionState | None:
    """The champion's training state, read through the registry and checked against its
    recorded sha256 (None when there is no champion)."""
    from metarec.io import file_sha256, load_state
    from metarec.registry.integrity import download_version
    from metarec.registry.tracking import client
    from metarec.registry.versions import CHAMPION, aliases

    mlc = client(cfg)
    version = aliases(cfg, mlc).get(CHAMPION)
    if version is None:
        return None
    mv = mlc.get_model_version(cfg.registered_model, str(version))
    with tempfile.TemporaryDirectory(prefix="metarec-champion-") as tmp:
        local = download_version(mlc, mv, tmp)
        folder = local / TRAINING_DIR
        missing = [f for f in (STATE_FILE, ENCODERS_FILE, PARAMS_FILE)
                   if not (folder / f).is_file()]
        if missing:
            raise WarmStartError(
                f"champion version {version} holds no {TRAINING_DIR}/{', '.join(missing)} "
                "(registered before warm starts): register a model trained by this version "
                "of metarec and promote it, or set train.init_from: none")
        state = load_state(folder / STATE_FILE)
        return ChampionState(
            version=int(version), model_state=state["model"], learner_state=state["learner"],
            encoders=FeatureEncoders.from_json((folder / ENCODERS_FILE).read_text("utf-8")),
            item_ids=[int(i) for i in json.loads((local / "metadata.json").read_text(
                "utf-8"))["item_ids"]],
            params=json.loads((folder / PARAMS_FILE).read_text("utf-8")),
            sha256=file_sha256(folder / STATE_FILE))


# --------------------------------------------------------------------------- row maps


def _bucket_map(old: BucketEncoder, new: BucketEncoder) -> np.ndarray:
    """New bucket -> old bucket: the old bucket holding a representative value of the new."""
    if old.edges == new.edges:
        return np.arange(new.cardinality)
    edges = np.asarray(new.edges, dtype=np.float64)
    if len(edges) == 0:
        reps = np.array([0.0])
    else:  # midpoints; the open ends half a neighbouring width beyond their edge
        half = np.diff(edges) / 2 if len(edges) > 1 else np.array([1.0])
        reps = np.concatenate([[edges[0] - half[0]], edges[:-1] + half[:len(edges) - 1],
                               [edges[-1] + half[-1]]])
    return np.concatenate([[0], old.transform(reps)])


def _row_map(old: Any, new: Any, where: str) -> np.ndarray:
    """For each row of the new embedding, the champion's row of the same value."""
    if type(old) is not type(new) or old.column != new.column:
        raise WarmStartError(f"{where}: the champion encodes {type(old).__name__}"
                             f"({old.column!r}), this data {type(new).__name__}({new.column!r})")
    if isinstance(new, BucketEncoder):
        return _bucket_map(old, new)
    lookup = {v: i for i, v in enumerate(old.vocabulary)}
    if isinstance(new, CategoricalEncoder):  # 0 unknown, 1.. vocabulary
        return np.array([0] + [lookup.get(v, -1) + 1 for v in new.vocabulary])
    assert isinstance(new, BagEncoder)  # 0 padding, 1 unknown, 2.. vocabulary
    return np.array([0, 1] + [lookup[v] + 2 if v in lookup else 1 for v in new.vocabulary])


def _check_fields(old: Sequence[Any], new: Sequence[Any], what: str) -> None:
    if [e.column for e in old] != [e.column for e in new]:
        raise WarmStartError(f"{what} differ: the champion has {[e.column for e in old]}, "
                             f"this data {[e.column for e in new]}")


def row_maps(champion: ChampionState, encoders: FeatureEncoders, item_ids: Sequence[int]
             ) -> dict[str, np.ndarray]:
    """Per embedding parameter name, the champion's row for every row of the new model."""
    old = champion.encoders
    _check_fields(old.user, encoders.user, "user feature columns")
    _check_fields(old.item, encoders.item, "item feature columns")
    _check_fields(old.item_multi, encoders.item_multi, "multi-valued item columns")
    maps = {f"user_emb.{i}.weight": _row_map(o, n, f"user column {n.column}")
            for i, (o, n) in enumerate(zip(old.user, encoders.user))}
    maps.update({f"item_emb.{i}.weight": _row_map(o, n, f"item column {n.column}")
                 for i, (o, n) in enumerate(zip(old.item, encoders.item))})
    maps.update({f"bag_emb.{n.column}.weight": _row_map(o, n, f"item column {n.column}")
                 for o, n in zip(old.item_multi, encoders.item_multi)})
    position = {item: i for i, item in enumerate(champion.item_ids)}
    maps["id_emb.weight"] = np.array([position.get(int(i), -1) for i in item_ids])
    return maps


# --------------------------------------------------------------------------- transfer


def _mapped(name: str, old: Tensor, rows: np.ndarray, fresh: Tensor) -> Tensor:
    if old.shape[1:] != fresh.shape[1:]:
        raise WarmStartError(f"parameter {name}: the champion's rows have shape "
                             f"{tuple(old.shape[1:])}, this model's {tuple(fresh.shape[1:])} "
                             "(model.embedding_dim differs?)")
    out = fresh.clone()
    known = rows >= 0
    out[torch.as_tensor(np.flatnonzero(known))] = old[torch.as_tensor(rows[known])].to(out.dtype)
    return out  # item ids the champion never saw keep their fresh rows


def transfer(champion: ChampionState, model: nn.Module, learner: nn.Module,
             encoders: FeatureEncoders, item_ids: Sequence[int]) -> dict[str, int]:
    """Load the champion's meta-parameters into ``model`` and ``learner`` (built on the new
    data); returns counts of what was carried (parameters, mapped and new embedding rows)."""
    maps = row_maps(champion, encoders, item_ids)
    buffers = {name for name, _ in model.named_buffers()}
    target = model.state_dict()
    theirs = {k: v for k, v in champion.model_state.items() if k not in buffers}
    mine = {k for k in target if k not in buffers}
    if set(theirs) != mine:
        extra, lacking = sorted(set(theirs) - mine), sorted(mine - set(theirs))
        raise WarmStartError(f"the champion's parameters do not fit this model (champion only: "
                             f"{extra[:5]}; this model only: {lacking[:5]}): model settings "
                             "differ (model.*), set train.init_from: none to start afresh")
    counts = {"parameters": 0, "rows_mapped": 0, "rows_new": 0}
    for name, old in theirs.items():
        fresh = target[name]
        if _ROWS.match(name):
            rows = maps[name]
            target[name] = _mapped(name, old, rows, fresh)
            counts["rows_mapped"] += int((rows >= 0).sum())
            counts["rows_new"] += int((rows < 0).sum())
        elif old.shape != fresh.shape:
            raise WarmStartError(f"parameter {name}: the champion's shape {tuple(old.shape)}, "
                                 f"this model's {tuple(fresh.shape)}; model settings or "
                                 "feature widths differ (set train.init_from: none)")
        else:
            target[name] = old.to(fresh.dtype)
        counts["parameters"] += 1
    _check_learner(champion.learner_state, learner)  # before anything is loaded
    model.load_state_dict(target)
    learner.load_state_dict(champion.learner_state)
    return counts


def _check_learner(state: dict[str, Tensor], learner: nn.Module) -> None:
    mine = learner.state_dict()
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise WarmStartError(f"the champion's learner state {shapes} does not fit this "
                             f"learner's {({k: tuple(v.shape) for k, v in mine.items()})} "
                             "(meta.learner or its settings differ)")
