"""metarec.pipeline: a checkpoint is resumed only by the training it belongs to."""

from __future__ import annotations

import dataclasses

from metarec.config import Config
from metarec.pipeline.inputs import Inputs
from metarec.pipeline.train import training_fingerprint


def _inputs(manifest):
    return Inputs(features=None, sets={}, training=("train",), validation=("valid",),
                  manifest=manifest)


def test_fingerprint_follows_training_identity():
    cfg = Config()
    base = training_fingerprint(cfg, _inputs({"data_hash": "a"}))
    assert base == training_fingerprint(cfg, _inputs({"data_hash": "a"}))
    # New data (a scheduled retrain) or other settings: a fresh checkpoint folder.
    assert base != training_fingerprint(cfg, _inputs({"data_hash": "b"}))
    lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1.0))
    assert base != training_fingerprint(lr, _inputs({"data_hash": "a"}))
    learner = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, learner="maml"))
    assert base != training_fingerprint(learner, _inputs({"data_hash": "a"}))
    # Where it runs does not change what it computes.
    cpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu",
                                                             progress=False))
    assert base == training_fingerprint(cpu, _inputs({"data_hash": "a"}))
