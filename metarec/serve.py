"""Serving: the exported graph in ONNX Runtime behind a small API (no PyTorch at request time).

:class:`Recommender` loads an export directory (``model.onnx`` + ``metadata.json``, see
:mod:`metarec.export`) or an MLflow URI (``models:/metarec@champion``), encodes a request (user
attributes through the saved encoders, item ids to rows), runs the adaptation graph once and
returns the top-k items. The HTTP API around it (limits, workers, reload) is
:mod:`metarec.serving`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from metarec.export.runtime import METADATA_FILE, choose_providers, session

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve; the message names the offending values."""


@dataclass(frozen=True)
class Recommendation:
    item_id: int
    title: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "score": self.score}


def adaptation_entry(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The export's adaptation (``Adaptation.to_dict()``); format-1 exports stored a string
    and top-level ``learner``/``inner_steps``/``inner_lr``, read into the same shape."""
    entry = meta.get("adaptation")
    if isinstance(entry, dict):
        return entry
    return {"kind": "ridge" if entry == "ridge" else "gradient", "learner": meta["learner"],
            "steps": 0 if entry == "ridge" else meta["inner_steps"],
            "lr": meta.get("inner_lr", 0.0)}


def describe(adaptation: Mapping[str, Any]) -> str:
    """A short phrase for logs: "closed-form ridge", "2 inner steps", "no adaptation"."""
    kind = adaptation["kind"]
    if kind == "ridge":
        return "closed-form ridge"
    return f"{adaptation['steps']} inner steps" if kind == "gradient" else "no adaptation"


def resolve_model_dir(uri: str, tracking_uri: str | None = None,
                      dest: str | Path | None = None) -> Path:
    """A local export directory for ``uri``: a path as is, an MLflow URI downloaded.

    A registered version (``models:/name@alias``, ``models:/name/3``) is downloaded and its
    files checked against the sha256 recorded at registration (a changed file is an
    ``IntegrityError``: :func:`metarec.registry.fetch_verified`). Other MLflow URIs
    (``runs:/id/path``...) are fetched with ``mlflow.artifacts.download_artifacts``,
    unverified; the directory holding ``metadata.json`` is used. Downloads go to ``dest``
    (default: a new temporary directory the caller owns; :func:`local_model_dir` removes it).
    """
    local = Path(uri)
    if not is_remote(uri):
        if not (local / METADATA_FILE).exists():
            raise FileNotFoundError(f"{uri}: no {METADATA_FILE}: not an exported model directory")
        return local
    if uri.startswith("models:/"):
        from metarec.registry.integrity import fetch_verified

        return fetch_verified(uri, tracking_uri, dest=dest)
    import mlflow

    if tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking_uri)
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="metarec-model-"))
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    found = sorted(root.rglob(METADATA_FILE), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"{uri}: the downloaded artifacts hold no {METADATA_FILE}")
    return found[0].parent


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is an MLflow URI (downloaded) rather than a local directory."""
    return "://" in uri or ":/" in uri


@contextmanager
def local_model_dir(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """:func:`resolve_model_dir` for the length of a block: a download is removed after it
    (a loaded :class:`Recommender` holds everything it needs in memory)."""
    if not is_remote(uri):
        yield resolve_model_dir(uri, tracking_uri)
        return
    with tempfile.TemporaryDirectory(prefix="metarec-model-") as tmp:
        yield resolve_model_dir(uri, tracking_uri, dest=tmp)


class Recommender:
    """Top-k recommendations for a new user from a handful of ratings, in ONNX Runtime.

    Args:
        model_dir: an export directory (see :mod:`metarec.export`).
        threads: intra-op threads of the ONNX Runtime session (0: its default).
        max_ratings: most ratings accepted in one request.
    """

    def __init__(self, model_dir: str | Path, *, threads: int = 1, max_ratings: int = 200,
                 source: str | None = None) -> None:
        import json

        from metarec.features.encoders import FeatureEncoders

        self.model_dir = Path(model_dir)
        self.source = source or str(model_dir)
        self.meta = json.loads((self.model_dir / METADATA_FILE).read_text(encoding="utf-8"))
        self.max_ratings = max_ratings
        self.item_ids = np.asarray(self.meta["item_ids"], dtype=np.int64)
        self.row_of = {int(i): r for r, i in enumerate(self.item_ids)}
        self.titles = self.meta.get("titles")
        self.user_fields = tuple(self.meta["user_fields"])
        encs = self.meta.get("user_encoders")
        self.encoders = None if encs is None else \
            FeatureEncoders.from_dict({"user": encs, "item": [], "item_multi": []}).user
        self.rating_min, self.rating_max = self.meta["rating_range"]
        self.adaptation = adaptation_entry(self.meta)
        self.providers = choose_providers()
        self.session = session(self.model_dir / self.meta["model_file"], threads=threads,
                               providers=self.providers)
        self._all_rows = np.arange(len(self.item_ids), dtype=np.int64)
        log.info("serving %s: %d items, learner %s, %s, providers %s", self.source,
                 len(self.item_ids), self.adaptation["learner"], describe(self.adaptation),
                 self.session.get_providers())

    @classmethod
    def load(cls, uri: str, *, tracking_uri: str | None = None, threads: int = 1,
             max_ratings: int = 200) -> "Recommender":
        """From an export directory or an MLflow URI (``models:/metarec@champion``); a
        download is removed once the model is in memory (no copy left per load)."""
        with local_model_dir(uri, tracking_uri) as model_dir:
            return cls(model_dir, threads=threads, max_ratings=max_ratings, source=uri)

    # ------------------------------------------------------------------ encoding
    def encode_user(self, user: Mapping[str, Any] | None) -> np.ndarray:
        """User attributes -> (Fu,) int64 indices; absent fields are "unknown" (0)."""
        user = dict(user or {})
        unknown = sorted(set(user) - set(self.user_fields))
        if unknown:
            raise RequestError(f"unknown user feature(s) {unknown}; this model knows "
                               f"{list(self.user_fields)}")
        if self.encoders is None:
            if user:
                raise RequestError("this model was exported without user encoders; "
                                   "send no user features")
            return np.zeros(len(self.user_fields), np.int64)
        out = np.zeros(len(self.user_fields), np.int64)
        for f, enc in enumerate(self.encoders):
            value = user.get(enc.column)
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise RequestError(f"user feature {enc.column!r} must be a string or a number, "
                                   f"got {value!r}")
            try:
                out[f] = int(enc.transform([value])[0])
            except ValueError as exc:
                raise RequestError(f"user feature {enc.column!r}: {exc}") from None
        return out

    def encode_ratings(self, ratings: Mapping[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
        """{item_id: rating} -> ((S,) item rows, (S,) float32 ratings), checked."""
        if len(ratings) > self.max_ratings:
            raise RequestError(f"{len(ratings)} ratings given; at most {self.max_ratings} "
                               f"are accepted")
        bad_ids, unknown, bad_values, dupes, rows, values = [], [], [], [], [], []
        seen: set[int] = set()
        for key, value in ratings.items():
            try:
                item = int(str(key).strip())
            except ValueError:
                bad_ids.append(key)
                continue
            if item not in self.row_of:
                unknown.append(item)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not self.rating_min <= value <= self.rating_max:
                bad_values.append(f"{key}: {value!r}")
                continue
            if self.row_of[item] in seen:
                dupes.append(item)
                continue
            seen.add(self.row_of[item])
            rows.append(self.row_of[item])
            values.append(float(value))
        if bad_ids:
            raise RequestError(f"item ids must be integers, got {bad_ids[:10]}")
        if unknown:
            raise RequestError(f"unknown item id(s) {sorted(unknown)[:20]}"
                               f"{' ...' if len(unknown) > 20 else ''}")
        if dupes:
            raise RequestError(f"item id(s) rated more than once: {sorted(set(dupes))[:10]}")
        if bad_values:
            raise RequestError(f"ratings must be numbers in [{self.rating_min}, "
                               f"{self.rating_max}]: {bad_values[:10]}")
        return np.asarray(rows, np.int64), np.asarray(values, np.float32)

    # ------------------------------------------------------------------ scoring
    def scores(self, user_cat: np.ndarray, rows: np.ndarray, ratings: np.ndarray,
               candidates: np.ndarray) -> np.ndarray:
        """Run the adaptation graph: (Fu,), (S,), (S,), (C,) -> (C,) scores."""
        feed = {"user_cat": user_cat, "support_items": rows, "support_ratings": ratings,
                "support_mask": np.ones(len(rows), np.float32), "candidate_items": candidates}
        return self.session.run(["scores"], feed)[0]

    def recommend(self, user: Mapping[str, Any] | None, ratings: Mapping[Any, Any], k: int = 10,
                  exclude_seen: bool = True) -> list[Recommendation]:
        """The ``k`` best-scored items after adapting to ``ratings`` ({item_id: rating}).

        Already rated items are left out unless ``exclude_seen`` is false. Raises
        :class:`RequestError` for unknown items or user features, bad ratings or k.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError(f"k must be a positive integer, got {k!r}")
        user_cat = self.encode_user(user)
        rows, values = self.encode_ratings(ratings)
        cands = self._all_rows
        if exclude_seen and len(rows):
            cands = np.setdiff1d(self._all_rows, rows, assume_unique=False)
        if len(cands) == 0:
            return []
        scores = self.scores(user_cat, rows, values, cands)
        if not np.all(np.isfinite(scores)):
            raise RuntimeError("the model produced non-finite scores")
        k = min(k, len(cands))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((cands[top], -scores[top]))]  # by score, ties by row: stable output
        return [Recommendation(int(self.item_ids[cands[i]]),
                               None if self.titles is None else self.titles[cands[i]],
                               float(scores[i])) for i in top]

    def info(self) -> dict[str, Any]:
        return {"model": self.source, "items": len(self.item_ids),
                "user_fields": list(self.user_fields), "adaptation": self.adaptation,
                "learner": self.adaptation["learner"], "providers": self.session.get_providers(),
                "extra": self.meta.get("extra", {})}
