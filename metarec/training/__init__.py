"""Training: the one meta-training loop (:mod:`.loop`), its multi-process form (:mod:`.distributed`)
and the baselines every learner is trained and measured against (:mod:`.baselines`)."""
