"""Does centring the ridge head's features help the few-shot curve? ``benchmarks/cv_tune.py``
(same arguments after the mode) with the ridge head's hidden features (and item factors)
centred before the closed-form step, the prior's scores unchanged (the centre times w0 moves into
the offset, the centre times the adapted weights out of the bias):

- ``support``: on each task's own support mean (weights fit the variation within the support,
  the bias the level; with one rating only the bias moves);
- ``population``: on a fixed centre, the mean hidden features of the rated items of training
  batches (an exponential moving average, 0.99, frozen at evaluation).

Why: the hidden features are ReLU outputs, all >= 0, so without a centre the weights' update
from one rating also shifts the user's every score (an extra bias adaptation the bias penalty
does not govern). Not part of metarec: the learner's ``ridge_head`` is patched in this process.
Prints the final penalties at each validation (``LAM bias .. weights med ..``).

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
if MODE not in ("support", "population"):
    raise SystemExit(f"mode {MODE!r}: support or population, then cv_tune.py's arguments")


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
                       query_feats, query_items, lam, loss="mse"):
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
            print(f"LAM bias {float(lam[-1]):.2f} weights med {float(lam[:-1].median()):.2f}",
                  flush=True)
        c = _centre(model, hs, m)
        hs_c = torch.cat([hs[..., :-1] - c.unsqueeze(1), hs[..., -1:]], -1)
        offset = model.offset(support_items).float() + (c @ w0[:-1]).unsqueeze(-1)
        dw = R.newton_step(hs_c, w0, offset, support_ratings.float(), m, lam, loss)
        dw = torch.cat([dw[:, :-1], dw[:, -1:] - (c * dw[:, :-1]).sum(-1, keepdim=True)], -1)
        return model.offset(query_items).float() + hq @ w0 + (hq * dw.unsqueeze(1)).sum(-1)


L.ridge_head = ridge_head_centred
import cv_tune  # noqa: E402

sys.exit(cv_tune.main(sys.argv[1:]))
