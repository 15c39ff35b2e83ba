"""One embedding table for every categorical field and attribute bag of the estimator.

The towers used to hold one ``nn.Embedding`` per field; each is now a segment of rows of one
table, ``FusedEmbedding.weight`` (sum of the cardinalities, E): field f's index i is row
``offset_f + i``. A tower's lookups become one gather per side (users; item fields and bags
together) and their backward one scatter into one gradient, instead of one small kernel pair
per field, which dominated the GPU meta-training step.

The per-field layout stays the contract everywhere else: the segments are initialised as the
separate tables were (same order, same random draws, so a seed gives the same weights),
:class:`FieldView` exposes each segment as ``.weight`` (a view), and the state_dict keeps the
per-field keys ``user_emb.<i>.weight``, ``item_emb.<i>.weight``, ``bag_emb.<name>.weight``
(:func:`split_state` / :func:`fuse_state`), so checkpoints, registered models, warm starts and
the ONNX export read and write what they always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

FUSED_KEY = "emb.weight"


@dataclass(frozen=True)
class Segment:
    """Rows ``start .. start + rows - 1`` of the fused table, stored under ``key``."""

    key: str
    start: int
    rows: int
    padding_idx: int | None = None


class FieldView:
    """One field's rows of the fused table, read like the ``nn.Embedding`` it replaces."""

    def __init__(self, table: "FusedEmbedding", segment: Segment) -> None:
        self._table, self.segment = table, segment

    @property
    def weight(self) -> Tensor:
        """(rows, E) view of the fused weight (writes go to the fused table)."""
        s = self.segment
        return self._table.weight[s.start:s.start + s.rows]

    @property
    def num_embeddings(self) -> int:
        return self.segment.rows

    @property
    def embedding_dim(self) -> int:
        return self._table.embedding_dim

    @property
    def padding_idx(self) -> int | None:
        return self.segment.padding_idx

    def __call__(self, index: Tensor) -> Tensor:
        return F.embedding(index, self.weight)


class FusedEmbedding(nn.Module):
    """The fused table: ``fields`` (key, rows, padding_idx) in order, each ``dim`` wide.

    Each segment is filled as ``nn.Embedding(rows, dim, padding_idx)`` would fill it (standard
    normal, padding row zero), one after the other, so the random stream is the per-field one.
    """

    def __init__(self, fields: list[tuple[str, int, int | None]], dim: int) -> None:
        super().__init__()
        self.segments: list[Segment] = []
        start = 0
        for key, rows, pad in fields:
            self.segments.append(Segment(key, start, int(rows), pad))
            start += int(rows)
        self.embedding_dim = int(dim)
        weight = torch.empty(start, dim)
        with torch.no_grad():
            for s in self.segments:
                weight[s.start:s.start + s.rows].normal_()
                if s.padding_idx is not None:
                    weight[s.start + s.padding_idx].zero_()
        self.weight = nn.Parameter(weight)

    def view(self, key: str) -> FieldView:
        return FieldView(self, next(s for s in self.segments if s.key == key))

    def offsets(self, keys: list[str]) -> list[int]:
        """First row of each segment ``keys``."""
        by_key = {s.key: s.start for s in self.segments}
        return [by_key[k] for k in keys]

    def forward(self, rows: Tensor) -> Tensor:
        """(...,) fused row indices -> (..., E)."""
        return F.embedding(rows, self.weight)


def split_state(table: FusedEmbedding, state: dict[str, Any], prefix: str) -> None:
    """In ``state`` (a state_dict being built), replace the fused weight by its per-field
    segments under their keys, in place and at its position."""
    fused = prefix + FUSED_KEY
    if fused not in state:
        return
    items = list(state.items())
    state.clear()
    for key, value in items:
        if key != fused:
            state[key] = value
            continue
        for s in table.segments:
            state[prefix + s.key] = value[s.start:s.start + s.rows].clone()


def fuse_state(table: FusedEmbedding, state: dict[str, Any], prefix: str,
               error_msgs: list[str]) -> None:
    """In a state_dict being loaded, replace the per-field keys (all of them) by the fused
    weight; a segment of the wrong shape is an error naming its key."""
    keys = [prefix + s.key for s in table.segments]
    if prefix + FUSED_KEY in state or (keys and not all(k in state for k in keys)):
        return  # already fused, or incomplete: the strict loader names what is missing
    parts = []
    for s, key in zip(table.segments, keys):
        value = state.pop(key)
        if tuple(value.shape) != (s.rows, table.embedding_dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                              f"{tuple(value.shape)}, the model has "
                              f"{(s.rows, table.embedding_dim)}")
            return
        parts.append(value.to(table.weight.dtype))
    state[prefix + FUSED_KEY] = (torch.cat(parts, 0) if parts
                                 else table.weight.detach().clone())
