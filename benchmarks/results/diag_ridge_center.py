"""Does centring the ridge head's features help the few-shot curve? ``benchmarks/cv_tune.py``
(same arguments after the mode) with the ridge head's hidden features (and item factors)
centred before the closed-form step, the prior's scores unchanged (the centre times w0 moves into
the offset, the centre times the adapted weights out of the bias):

- ``support``: on each task's own support mean (weights fit the variation within the support,
  the bias the level; with one rating only the bias moves);
- ``population``: on a fixed centre, the mean hidden features of the rated items of training
  batches (an exponential moving average, 0.99, frozen at evaluation);
- ``learned``: on ``alpha`` times that population centre, ``alpha = sigmoid(20 p)`` a
  meta-parameter of the ridge learner (``p`` starts at -0.15: alpha 0.05, nearly uncentred),
  trained by the same outer loop, so that each dataset chooses how much of the weights' common
  move to keep.

Why: the hidden features are ReLU outputs, all >= 0, so without a centre the weights' update
from one rating also shifts the user's every score (an extra bias adaptation the bias penalty
does not govern). Not part of metarec: the learner's ``ridge_head`` is patched in this process.
Prints the final penalties at each validation (``LAM bias .. weights med .. alpha ..``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/diag_ridge_center.py population \
        --folds 4 --learners ridge --work-dir artifacts/bench_c_ml --out cv_center_ml100k.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import metarec.adaptation.ridge as R  # noqa: E402
import metarec.meta.learners as L  # noqa: E402

MODE = sys.argv.pop(1) if len(sys.argv) > 1 else ""
if MODE not in ("support", "population", "learned"):
    raise SystemExit(f"mode {MODE!r}: support, population or learned, then cv_tune.py's arguments")
ALPHA_RATE = 20.0


def _centre(model, hs, m):
    """(N, H1-1) centres of the head features (the constant 1 excluded)."""
    if MODE == "support":
        return (hs[..., :-1] * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-6)
    if model.training or not hasattr(model, "_centre"):
        with torch.no_grad():
            rated = (m > 0).float()
            batch = (hs[..., :-1] * rated.unsqueeze(-1)).sum((0, 1)) / rated.sum().clamp_min(1.0)
            model._centre = batch if not hasattr(model, "_centre") \
                else 0.99 * model._centre + 0.01 * batch
    return model._centre.unsqueeze(0).expand(hs.shape[0], -1)


def ridge_head_centred(model, support_feats, support_items, support_ratings, support_mask,
                       query_feats, query_items, lam, loss="mse", alpha=None):
    params = model.decision_params()
    n = len(model.decision)
    hs = R.hidden_features(params, support_feats, n, model.head_features(support_items))
    hq = R.hidden_features(params, query_feats, n, model.head_features(query_items))
    w0 = R.prior_weights(params, n, hs.shape[-1] - model.decision[-1].in_features - 1)
    with torch.autocast(hs.device.type, enabled=False):
        hs, hq, w0, lam = hs.float(), hq.float(), w0.float(), lam.float()
        m = support_mask.float()
        if not model.training and getattr(model, "_shown", None) is not lam.data_ptr():
            model._shown = lam.data_ptr()
            a = "" if alpha is None else f" alpha {float(alpha):.3f}"
            print(f"LAM bias {float(lam[-1]):.2f} weights med {float(lam[:-1].median()):.2f}{a}",
                  flush=True)
        c = _centre(model, hs, m)
        if alpha is not None:
            c = alpha.float() * c
        hs_c = torch.cat([hs[..., :-1] - c.unsqueeze(1), hs[..., -1:]], -1)
        offset = model.offset(support_items).float() + (c @ w0[:-1]).unsqueeze(-1)
        dw = R.newton_step(hs_c, w0, offset, support_ratings.float(), m, lam, loss)
        dw = torch.cat([dw[:, :-1], dw[:, -1:] - (c * dw[:, :-1]).sum(-1, keepdim=True)], -1)
        return model.offset(query_items).float() + hq @ w0 + (hq * dw.unsqueeze(1)).sum(-1)


L.ridge_head = ridge_head_centred
if MODE == "learned":
    _init = L.RidgeLearner.__init__

    def _init_alpha(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.centre_p = torch.nn.Parameter(torch.tensor(-3.0 / ALPHA_RATE))

    def _scores(self, model, batch):
        return ridge_head_centred(
            model, model.embed(batch.user_cat, batch.support_items), batch.support_items,
            batch.support_ratings, batch.support_mask,
            model.embed(batch.user_cat, batch.query_items), batch.query_items,
            self.ridge_lambda(), self.loss, torch.sigmoid(ALPHA_RATE * self.centre_p))

    L.RidgeLearner.__init__ = _init_alpha
    L.RidgeLearner.scores = _scores
import cv_tune  # noqa: E402

sys.exit(cv_tune.main(sys.argv[1:]))
