"""What the estimator fits from training ratings (:meth:`Estimator.fit_item_stats`): each
item's effect (its shrunk mean, or the debiased b_i of a baseline predictor) and collaborative
item factors (PureSVD, refined by alternating least squares). Plain tensor functions, float64."""

from __future__ import annotations

import torch
from torch import Tensor


def item_effects(item_rows: Tensor, ratings: Tensor, users: Tensor | None, n_items: int,
                 shrinkage: float, debias: int = 0) -> Tensor:
    """(n_items,) float64 item effects relative to the global mean mu of ``ratings``.

    ``debias`` 0: the mean shrunk by ``shrinkage`` pseudo-ratings at mu, minus mu. ``debias``
    n > 0: b_i of the baseline predictor r = mu + b_u + b_i (Koren, TKDD 2010) by n alternating
    sweeps of shrunk means (b_i over r - mu - b_u, then b_u over r - mu - b_i, both with
    ``shrinkage``), which needs ``users`` (the user of each rating): an item rated mostly by
    generous raters is then not taken for a good one. Items without ratings get 0.
    """
    mu = ratings.mean()
    count = torch.bincount(item_rows, minlength=n_items).double()
    total = torch.bincount(item_rows, weights=ratings, minlength=n_items)
    mean = (total + shrinkage * mu) / (count + shrinkage).clamp(min=1e-12) - mu
    if debias:
        if users is None:
            raise ValueError("fit_item_stats: item_debias needs the user of every rating")
        if users.shape != item_rows.shape:
            raise ValueError("fit_item_stats: user_index must have one entry per rating")
        mean = _debias_sweeps(item_rows, ratings, users, count, mu, shrinkage, debias)[0]
    mean[count == 0] = 0.0
    return mean


def _debias_sweeps(item_rows: Tensor, ratings: Tensor, users: Tensor, count: Tensor, mu: Tensor,
                   shrinkage: float, debias: int) -> tuple[Tensor, Tensor]:
    """:func:`item_effects`' ``debias`` alternating sweeps: the last b_i (n_items,) and each
    rating's residual r - mu - b_u that it averaged (R,), b_u as of that sweep."""
    _, users = torch.unique(users.long().cpu(), return_inverse=True)  # compact user index
    n_users, n_items = int(users.max()) + 1, len(count)
    ucount = torch.bincount(users, minlength=n_users).double()
    b_u = torch.zeros(n_users, dtype=torch.float64)
    for _ in range(debias):
        own = ratings - mu - b_u[users]
        mean = torch.bincount(item_rows, weights=own, minlength=n_items) / (
            count + shrinkage).clamp(min=1e-12)
        b_u = torch.bincount(users, weights=ratings - mu - mean[item_rows], minlength=n_users)
        b_u = b_u / (ucount + shrinkage).clamp(min=1e-12)
    return mean, own


def pure_svd(item_rows: Tensor, ratings: Tensor, users: Tensor, n_items: int, k: int) -> Tensor:
    """(n_items, k) item factors: right singular vectors times singular values (relative to
    the largest) of the dense users x items matrix of ratings minus each user's mean rating,
    zeros where unrated (PureSVD, Cremonesi et al. 2010), times sqrt(number of rated items) so
    that the first column has unit root mean square over the rated items (unit-scale inputs for
    the tower's Linear and the ridge head). Columns beyond the rank are zero.
    Dense: users x items float64 (ML-1M: 6,040 x 3,706, 180 MB); far larger catalogues would need
    a sparse truncated SVD."""
    if users.shape != item_rows.shape:
        raise ValueError("fit_item_stats: user_index must have one entry per rating")
    _, uidx = torch.unique(users, return_inverse=True)
    n_users = int(uidx.max()) + 1
    user_mean = (torch.bincount(uidx, weights=ratings, minlength=n_users)
                 / torch.bincount(uidx, minlength=n_users).double())
    m = torch.zeros(n_users, n_items, dtype=torch.float64)
    m.index_put_((uidx, item_rows), ratings - user_mean[uidx], accumulate=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    k_eff = min(k, s.shape[0])
    out = torch.zeros(n_items, k, dtype=torch.float64)
    if k_eff and float(s[0]) > 0:
        rated = float((torch.bincount(item_rows, minlength=n_items) > 0).sum())
        out[:, :k_eff] = vh[:k_eff].T * (s[:k_eff] / s[0]) * rated ** 0.5
    # Singular vectors have an arbitrary sign: fix it (largest |entry| positive) so that the
    # same ratings always give the same factors.
    sign = torch.sign(out.gather(0, out.abs().argmax(0, keepdim=True)))
    return out * torch.where(sign == 0, 1.0, sign)


def als_refine(item_rows: Tensor, ratings: Tensor, users: Tensor, fac: Tensor, reg: float,
               sweeps: int) -> Tensor:
    """``sweeps`` alternating least-squares sweeps from the (n_items, k) item factors ``fac``
    on the observed user-mean-centred ratings only (user factors given the items, then item
    factors given the users, each a ridge solve with ``reg``), rescaled to unit root mean
    square over the rated items. PureSVD fills the missing ratings with zeros, so its factors
    of sparsely rated items are shrunk by their density; ALS fits the ratings that exist.
    Items without ratings keep zeros. ``sweeps`` 0 returns ``fac`` unchanged."""
    if sweeps == 0 or fac.shape[1] == 0:
        return fac
    return _als(item_rows, ratings, users, fac, reg, sweeps)[0]


def _als(item_rows: Tensor, ratings: Tensor, users: Tensor, fac: Tensor, reg: float,
         sweeps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`als_refine`'s sweeps; returns the rescaled item factors, the last sweep's user
    factor of each rating (R, k), the centred ratings (R,) and the scale applied."""
    _, uidx = torch.unique(users, return_inverse=True)
    n_users, (n_items, k) = int(uidx.max()) + 1, fac.shape
    user_mean = (torch.bincount(uidx, weights=ratings, minlength=n_users)
                 / torch.bincount(uidx, minlength=n_users).double())
    res = ratings - user_mean[uidx]
    eye = reg * torch.eye(k, dtype=torch.float64)

    def solve(rows: Tensor, n: int, other: Tensor) -> Tensor:
        """Per row r in 0..n-1: argmin_x sum over its ratings (res - other . x)^2 + reg |x|^2."""
        a = torch.zeros(n, k, k, dtype=torch.float64).index_add_(
            0, rows, other[:, :, None] * other[:, None, :])
        b = torch.zeros(n, k, dtype=torch.float64).index_add_(0, rows, other * res[:, None])
        return torch.linalg.solve(a + eye, b)

    user_fac = torch.zeros(n_users, k, dtype=torch.float64)
    for _ in range(sweeps):
        user_fac = solve(uidx, n_users, fac[item_rows])
        fac = solve(item_rows, n_items, user_fac[uidx])
    rated = torch.bincount(item_rows, minlength=n_items) > 0
    rms = fac[rated].pow(2).mean().sqrt()
    scale = 1.0 / rms if float(rms) > 0 else torch.ones((), dtype=torch.float64)
    return fac * scale, user_fac[uidx], res, scale


def leave_one_out(item_rows: Tensor, ratings: Tensor, users: Tensor, n_items: int,
                  shrinkage: float, debias: int = 0, n_factors: int = 0, reg: float = 5.0,
                  sweeps: int = 0, chunk: int = 65536) -> dict[str, Tensor]:
    """What each training rating's own user would see of its item had the rating not been fitted.

    The item statistics and factors come from every training rating, so a training task's
    query item carries that very rating in its mean (and its factors): an optimism a new user
    never meets, as large as 0.015 MAE for the item-mean predictor on ML-100K's training users.
    Per rating (R of them, in the order given): ``effect`` (R,) the item effect without it (the
    shrunk mean, or the last b_i sweep of ``debias`` with the user's b_u), ``log_count`` (R,)
    the item's log count column without it (same normaliser as the full fit), ``known`` (R,)
    whether the item keeps a rating, and, with ``n_factors`` and ALS ``sweeps`` > 0, ``fac``
    (R, k): the last item step of :func:`als_refine` with the rating's user removed from that
    item's normal equations (a rank-one downdate of the same system), at the full fit's scale.
    The user factors and the other items stay those of the full fit: the rating's pull on its
    own item is what is removed. Without ALS sweeps the PureSVD factors are left as fitted.
    """
    r = ratings.double()
    mu = r.mean()
    count = torch.bincount(item_rows, minlength=n_items).double()
    left = count[item_rows] - 1.0
    denom = (left + shrinkage).clamp(min=1e-12)
    if debias:
        own = _debias_sweeps(item_rows, r, users, count, mu, shrinkage, debias)[1]
        sums = torch.bincount(item_rows, weights=own, minlength=n_items)
        effect = (sums[item_rows] - own) / denom
    else:
        total = torch.bincount(item_rows, weights=r, minlength=n_items)
        effect = (total[item_rows] - r + shrinkage * mu) / denom - mu
    effect = torch.where(left > 0, effect, torch.zeros_like(effect))
    out = {"effect": effect, "known": (left > 0).double(),
           "log_count": torch.log1p(left) / torch.log1p(count.max())}
    if n_factors == 0 or sweeps == 0:
        return out
    # The fit again (the same functions, so the same factors), keeping the last sweep's user
    # factors: each rating's item system is then downdated by its own user (rank one).
    start = pure_svd(item_rows, r, users, n_items, n_factors)
    _, p, res, scale = _als(item_rows, r, users, start, reg, sweeps)
    eye = reg * torch.eye(n_factors, dtype=torch.float64)
    a = torch.zeros(n_items, n_factors, n_factors, dtype=torch.float64).index_add_(
        0, item_rows, p[:, :, None] * p[:, None, :]) + eye
    b = torch.zeros(n_items, n_factors, dtype=torch.float64).index_add_(
        0, item_rows, p * res[:, None])
    parts = []
    for s in range(0, len(r), chunk):
        i, pu = item_rows[s:s + chunk], p[s:s + chunk]
        parts.append(torch.linalg.solve(a[i] - pu[:, :, None] * pu[:, None, :],
                                        b[i] - pu * res[s:s + chunk, None]) * scale)
    out["fac"] = torch.cat(parts) * (left > 0).double()[:, None]
    return out
