"""Encoders: unknown slots, buckets, bags, JSON round trip; features fitted on training only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.config import FeaturesConfig
from metarec.data.splits import melu_split
from metarec.features.build import build_features, load_encoders, load_features, save_features
from metarec.features.encoders import (BagEncoder, BucketEncoder, CategoricalEncoder,
                                       FeatureEncoders)
from tests.test_splits import make_tables


def fake_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic 4-dim 'embedding': length and letter counts of each text."""
    return np.array([[len(t), t.count("e"), t.count("o"), t.count(" ")] for t in texts],
                    dtype=np.float32)


def test_categorical_unknown_slot_and_sorted_vocabulary():
    enc = CategoricalEncoder.fit("occupation", ["writer", "artist", "writer", None, np.nan])
    assert enc.vocabulary == ("artist", "writer") and enc.cardinality == 3
    out = enc.transform(["writer", "artist", "pilot", None, pd.NA])
    assert out.tolist() == [2, 1, 0, 0, 0] and out.dtype == np.int64
    rare = CategoricalEncoder.fit("zip", ["1", "1", "2"], min_count=2)
    assert rare.transform(["1", "2"]).tolist() == [1, 0]


def test_bucket_edges_boundaries_and_missing():
    enc = BucketEncoder.fit("age", [], edges=[18, 25, 35])
    # (-inf,18) -> 1, [18,25) -> 2, [25,35) -> 3, [35,inf) -> 4, missing -> 0
    assert enc.transform([3, 18, 24.9, 25, 35, 99, None]).tolist() == [1, 2, 2, 3, 4, 4, 0]
    assert enc.cardinality == 5
    quant = BucketEncoder.fit("x", [1, 2, 3, 4, 5, 6, 7, 8], quantiles=2)
    assert quant.edges == (4.5,)
    with pytest.raises(ValueError, match="increase"):
        BucketEncoder.fit("age", [], edges=[30, 20])
    with pytest.raises(ValueError, match="non-numeric"):
        enc.transform(["old"])


def test_bags_pad_zero_unknown_one():
    enc = BagEncoder.fit("genres", [["Drama"], ["Comedy", "Drama"]])
    assert enc.vocabulary == ("Comedy", "Drama") and enc.cardinality == 4
    out = enc.transform([["Drama", "Horror"], [], ["Comedy", "Comedy", "Drama"]])
    assert out.tolist() == [[3, 1], [0, 0], [2, 3]]
    assert enc.transform([["Drama"]], width=3).tolist() == [[3, 0, 0]]
    with pytest.raises(ValueError, match="lists"):
        enc.transform(["Drama|Comedy"])


def test_json_round_trip_is_exact_and_hash_stable():
    encs = FeatureEncoders(user=(CategoricalEncoder("g", ("F", "M")), BucketEncoder("age", (18.0,))),
                           item_multi=(BagEncoder("genres", ("Drama",)),))
    again = FeatureEncoders.from_json(encs.to_json())
    assert again == encs and again.fingerprint() == encs.fingerprint()
    assert FeatureEncoders(user=encs.user[:1]).fingerprint() != encs.fingerprint()


def test_features_fit_on_training_users_and_items_only(tmp_path):
    tables = make_tables()
    tables.users.loc[tables.users.user_id == 20, "occupation"] = "astronaut"
    split = melu_split(tables, seed=0, year_threshold=1997)
    cfg = FeaturesConfig(cache_dir=str(tmp_path / "cache"))
    feats, encs = build_features(tables, split, cfg, encode_fn=fake_encoder)
    assert feats.user_ids.tolist() == list(range(1, 21))
    occ = feats.user_fields.index("occupation")
    new_users = sorted(set(range(1, 21)) - set(split.fit_user_ids))
    fitted = set(tables.users.loc[tables.users.user_id.isin(split.fit_user_ids), "occupation"])
    vocab = encs.user[occ].vocabulary
    assert set(vocab) == fitted
    for u in new_users:  # a new user's category is unknown unless training users share it
        value = tables.users.loc[tables.users.user_id == u, "occupation"].item()
        assert (feats.user_cat[u - 1, occ] == 0) == (value not in fitted)
    # "Horror" appears only on new items: unknown (1) in their bags
    row = int(np.searchsorted(feats.item_ids, 1001))
    assert feats.item_multi["genres"][row].tolist() == [1, encs.item_multi[0].vocabulary.index(
        "Drama") + 2]
    assert feats.item_text.shape == (len(tables.items), 4)
    # year 1990 falls in a real bucket; the item without a year gets 0 (missing)
    year = feats.item_fields.index("year")
    assert feats.item_cat[-1, year] == 0 and feats.item_cat[0, year] > 0
    assert (feats.user_cat < np.array(feats.user_cardinality)).all()

    save_features(feats, encs, tmp_path / "f1", {"seed": 0})
    save_features(feats, encs, tmp_path / "f2", {"seed": 0})
    for name in ("features.npz", "encoders.json", "manifest.json"):
        assert (tmp_path / "f1" / name).read_bytes() == (tmp_path / "f2" / name).read_bytes()
    back = load_features(tmp_path / "f1")
    assert back.user_fields == feats.user_fields and back.item_multi_cardinality == \
        feats.item_multi_cardinality
    np.testing.assert_array_equal(back.item_multi["genres"], feats.item_multi["genres"])
    np.testing.assert_array_equal(back.item_text, feats.item_text)
    assert load_encoders(tmp_path / "f1") == encs
