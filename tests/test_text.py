"""Language-model item embeddings: the cache (with an injected encoder) and the real model."""

from __future__ import annotations


import numpy as np
import pytest

from metarec.features.text import embed_texts


class CountingEncoder:
    """A tiny deterministic embedding that records every text it is asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[len(t), sum(map(ord, t)) % 97] for t in texts], dtype=np.float32)


def test_cache_computes_each_text_once(tmp_path):
    enc = CountingEncoder()
    texts = ["Toy Story", "Heat", "Toy Story", "Fargo"]
    first = embed_texts(texts, "toy-model", tmp_path, encode_fn=enc)
    assert enc.seen == ["Toy Story", "Heat", "Fargo"]  # duplicates encoded once
    assert first.shape == (4, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], first[2])
    again = embed_texts(texts[::-1], "toy-model", tmp_path, encode_fn=enc)
    assert enc.seen == ["Toy Story", "Heat", "Fargo"]  # nothing recomputed
    np.testing.assert_array_equal(again, first[::-1])
    embed_texts(["Heat", "Alien"], "toy-model", tmp_path, encode_fn=enc)
    assert enc.seen[3:] == ["Alien"]  # only the new text
    embed_texts(["Heat"], "other-model", tmp_path, encode_fn=enc)
    assert enc.seen[4:] == ["Heat"]  # the model id is part of the key


def test_bad_input_and_bad_model_output_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a string"):
        embed_texts(["ok", None], "toy-model", tmp_path, encode_fn=CountingEncoder())
    with pytest.raises(ValueError, match="returned shape"):
        embed_texts(["a", "b"], "toy-model", tmp_path,
                    encode_fn=lambda t: np.zeros((1, 3), np.float32))


def test_real_model_offline_and_cached(tmp_path, monkeypatch):
    texts = ["Toy Story. Genres: Animation, Children's, Comedy. Year: 1995.",
             "Toy Story 2. Genres: Animation, Children's, Comedy. Year: 1999.",
             "Schindler's List. Genres: Drama, War. Year: 1993."]
    vecs = embed_texts(texts, cache_dir=tmp_path, device="cpu")
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2]  # two Toy Story films are closer than a war drama

    def no_model(*args, **kwargs):
        raise AssertionError("the cached rerun must not load the language model")

    # Timing is no proof here (another test may have loaded the model already): the cached
    # rerun must not ask for the model at all.
    import metarec.features.text as text_mod
    monkeypatch.setattr(text_mod, "load_text_model", no_model)
    again = embed_texts(texts, cache_dir=tmp_path, device="cpu")
    np.testing.assert_array_equal(again, vecs)
