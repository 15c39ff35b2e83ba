"""The MeLU-style rating estimator (Lee et al., "MeLU: Meta-Learned User Preference Estimator
for Cold-Start Recommendation", KDD 2019).

Two towers turn indices into embeddings and a small decision MLP turns the concatenated
embeddings into a rating:

- user tower: one embedding per categorical user field (gender, age, occupation, ...);
- item tower: one embedding per categorical item field, one mean-pooled embedding per attribute
  bag (genres, actors, ...) and the pretrained language-model text embedding projected by a Linear;
- decision MLP: ``Linear -> ReLU -> ... -> Linear(1)`` on ``concat(item, user)``.

Optional item statistics (``model.item_stats``): each item's log rating count and shrunk mean
rating (centred on the global mean) over the *training* ratings, held as a buffer
``item_stats`` (I, 2) and fitted by :meth:`Estimator.fit_item_stats` (the training loop does it
from the training tasks); items never rated in training keep (0, 0), "unknown". They enter the
item tower through a Linear, so the ONNX export (which runs the item tower once) carries them.
``model.item_offset`` adds the item's shrunk mean deviation (that buffer's column 1) to the
score, so the MLP learns a residual on the item mean; ``model.item_id`` adds a learned item-id
embedding and ``model.item_factors`` PureSVD factors of the training rating matrix to the item
tower (both zero for items without training ratings, so new items are scored from features).
``model.head_factors`` also hands the raw item factors to the ridge head
(:mod:`metarec.adaptation.ridge`), whose closed form then fits a user's factor vector on them:
the collaborative part ``p_u . q_i`` of a low-rank rating, recovered from the support set.
``model.item_norm`` LayerNorms the item tower output and ``model.embedding_std`` scales the
embedding initialisation, so that the decision MLP's input has a controlled scale and inner
learning rates behave the same whatever the number of fields.

The model holds the item feature tables (and the user table) as buffers, so a batch of tasks is
only item rows, ratings, masks and user rows. The split :meth:`Estimator.embed` (towers) /
:meth:`Estimator.decide` (decision MLP from an explicit parameter dict) lets MeLU mode compute
embeddings once per batch and adapt only the decision layers.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor, nn

from metarec.adaptation import mlp
from metarec.adaptation.mlp import DECISION_PREFIX
from metarec.config import ModelConfig
from metarec.data.arrays import FeatureArrays
from metarec.models.embedding import FieldView, FusedEmbedding, fuse_state, split_state
from metarec.models.fitting import als_refine, item_effects, pure_svd


class Estimator(nn.Module):
    """Rating estimator over dense feature indices (see metarec.data.arrays for conventions).

    Args:
        user_cat: (U, Fu) int64 user table; ``user_cardinality`` its vocabulary sizes.
        item_cat: (I, Fi) int64 item table; ``item_cardinality`` its vocabulary sizes.
        item_multi: name -> (I, L) int64 attribute bags (0 = padding); cardinalities by name.
        item_text: (I, D) float32 language-model embeddings, or None for no text feature.
        embedding_dim: size of every categorical/bag embedding; text_proj_dim: text projection.
        hidden: widths of the decision MLP's hidden layers (its output layer has width 1).
        item_stats: add the (I, 2) training statistics buffer and its Linear to the item tower;
            ``item_stats_shrinkage`` pseudo-ratings shrink its means (see fit_item_stats);
            ``item_stats_from``: "all" training ratings, or "support" sets only (then no
            training query rating is ever part of its own item's statistics);
            ``item_debias`` > 0: the mean column is the item effect of the baseline predictor
            (:func:`metarec.models.fitting.item_effects`), not the item's raw mean.
        item_norm: LayerNorm over the item tower output.
        embedding_std: standard deviation of the embedding initialisation (PyTorch: 1.0).
        item_offset: add the item's shrunk mean deviation to the score (needs item_stats).
        item_id: learned per-item embedding in the item tower (masked to zero for items
            without training ratings by the ``item_known`` buffer).
        item_factors: width of the PureSVD item factors in the item tower (0: none).
        head_factors: the ridge head's features include the item factors (see
            :meth:`head_features`; needs item_factors).
        tower_factors: the item factors enter the item tower (false: only the ridge head).
        item_factors_als: alternating least-squares sweeps refining the PureSVD factors on the
            observed ratings only (:func:`metarec.models.fitting.als_refine`), with ridge
            ``item_factors_reg``.
    """

    def __init__(
        self,
        user_cat: Tensor,
        user_cardinality: tuple[int, ...],
        item_cat: Tensor,
        item_cardinality: tuple[int, ...],
        item_multi: Mapping[str, Tensor],
        item_multi_cardinality: Mapping[str, int],
        item_text: Tensor | None,
        embedding_dim: int,
        text_proj_dim: int,
        hidden: tuple[int, ...],
        item_stats: bool = False,
        item_stats_shrinkage: float = 5.0,
        item_stats_from: str = "all",
        item_norm: bool = False,
        embedding_std: float = 1.0,
        item_offset: bool = False,
        item_id: bool = False,
        item_factors: int = 0,
        head_factors: bool = False,
        tower_factors: bool = True,
        item_factors_als: int = 0,
        item_factors_reg: float = 5.0,
        item_debias: int = 0,
    ) -> None:
        super().__init__()
        _check_table("user_cat", user_cat, user_cardinality)
        _check_table("item_cat", item_cat, item_cardinality)
        self.multi_names = tuple(sorted(item_multi))
        self.register_buffer("user_table", user_cat.long())
        self.register_buffer("item_table", item_cat.long())
        for name in self.multi_names:
            card = int(item_multi_cardinality[name])
            _check_table(f"item_multi[{name!r}]", item_multi[name], (card,) * item_multi[name].shape[1])
            self.register_buffer(f"item_bag_{name}", item_multi[name].long())
        self.register_buffer("item_text", None if item_text is None else item_text.float())
        # One table for every field and bag (metarec.models.embedding), per-field in the
        # state_dict. Bags: padding row 0, mean-pooled over the non-padding entries: this is
        # EmbeddingBag(mode="mean", padding_idx=0) written with plain ops so that it works
        # under vmap (MAML adapting all parameters) and exports to ONNX.
        self.emb = FusedEmbedding(
            [(f"user_emb.{i}.weight", c, None) for i, c in enumerate(user_cardinality)]
            + [(f"item_emb.{i}.weight", c, None) for i, c in enumerate(item_cardinality)]
            + [(f"bag_emb.{n}.weight", int(item_multi_cardinality[n]), 0)
               for n in self.multi_names], embedding_dim)
        self.register_buffer("user_offsets", torch.tensor(
            self.emb.offsets([f"user_emb.{i}.weight" for i in range(len(user_cardinality))]),
            dtype=torch.long), persistent=False)
        self.bag_widths = tuple(int(item_multi[n].shape[1]) for n in self.multi_names)
        item_offsets = self.emb.offsets([f"item_emb.{i}.weight" for i in range(len(item_cardinality))])
        for n, width in zip(self.multi_names, self.bag_widths):  # one offset per bag column
            item_offsets += self.emb.offsets([f"bag_emb.{n}.weight"]) * width
        self.register_buffer("item_offsets", torch.tensor(item_offsets, dtype=torch.long),
                             persistent=False)
        self.register_state_dict_post_hook(
            lambda module, state, prefix, meta: split_state(module.emb, state, prefix))
        self.register_load_state_dict_pre_hook(
            lambda module, state, prefix, meta, strict, missing, unexpected, errors:
            fuse_state(module.emb, state, prefix, errors))
        self.text_proj = (None if item_text is None
                          else nn.Linear(item_text.shape[1], text_proj_dim))
        n_items = item_cat.shape[0]
        self.register_buffer("item_stats", torch.zeros(n_items, 2) if item_stats else None)
        self.stats_proj = nn.Linear(2, embedding_dim) if item_stats else None
        self.item_stats_shrinkage = float(item_stats_shrinkage)
        if item_stats_from not in ("all", "support"):
            raise ValueError(f"item_stats_from must be 'all' or 'support', got {item_stats_from!r}")
        self.item_stats_from = item_stats_from
        if item_debias < 0:
            raise ValueError(f"item_debias must be >= 0 sweeps, got {item_debias}")
        self.item_debias = int(item_debias)
        if item_offset and not item_stats:
            raise ValueError("item_offset needs item_stats (the offset is the item's shrunk mean)")
        self.item_offset = bool(item_offset)
        self.id_emb = nn.Embedding(n_items, embedding_dim) if item_id else None
        self.register_buffer("item_known", torch.zeros(n_items) if item_id else None)
        if item_factors < 0:
            raise ValueError(f"item_factors must be >= 0, got {item_factors}")
        self.register_buffer("item_fac", torch.zeros(n_items, item_factors) if item_factors else None)
        tower_factors = bool(item_factors and tower_factors)
        # Training-only rows past the catalog (set_virtual_rows): never saved, never exported.
        for name in ("virtual_base", "virtual_stats", "virtual_fac", "virtual_known"):
            self.register_buffer(name, None, persistent=False)
        self.fac_proj = nn.Linear(item_factors, embedding_dim) if tower_factors else None
        if head_factors and not item_factors:
            raise ValueError("head_factors needs item_factors > 0 (the factors it hands over)")
        self.head_factors = bool(head_factors)
        if item_factors_als < 0 or item_factors_reg <= 0:
            raise ValueError("item_factors_als must be >= 0 and item_factors_reg > 0, got "
                             f"{item_factors_als} and {item_factors_reg}")
        self.item_factors_als, self.item_factors_reg = int(item_factors_als), float(item_factors_reg)
        item_width = embedding_dim * (len(item_cardinality) + len(self.multi_names) + int(item_id)
                                      + int(tower_factors))
        item_width += (0 if item_text is None else text_proj_dim) + (embedding_dim if item_stats else 0)
        self.item_norm = nn.LayerNorm(item_width) if item_norm and item_width else None
        if embedding_std <= 0:
            raise ValueError(f"embedding_std must be > 0, got {embedding_std}")
        with torch.no_grad():
            ids = [] if self.id_emb is None else [self.id_emb]
            for emb in [] if embedding_std == 1.0 else [*self.user_emb, *self.item_emb, *self.bag_emb.values(), *ids]:
                emb.weight.normal_(0.0, embedding_std)
                if emb.padding_idx is not None:
                    emb.weight[emb.padding_idx].zero_()
        width = item_width + embedding_dim * len(user_cardinality)
        if width == 0:
            raise ValueError("the estimator needs at least one user or item feature")
        self.feature_dim = width
        sizes = (width, *hidden, 1)
        self.decision = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    # ------------------------------------------------------------------ towers
    def embed(self, user_cat: Tensor, item_rows: Tensor) -> Tensor:
        """Tower features of (user, item) pairs.

        Args:
            user_cat: (..., Fu) int64 categorical user row(s) (``user_table[row]`` for known
                users; a new user's encoded attributes otherwise).
            item_rows: (..., K) int64 rows of the item tables.
        Returns:
            (..., K, feature_dim) float: ``concat(item tower, user tower)`` per pair.
        """
        items = self.item_embed(item_rows)  # (..., K, Ei)
        users = self.user_embed(user_cat)  # (..., Eu)
        users = users.unsqueeze(-2).expand(*items.shape[:-1], users.shape[-1])
        return torch.cat([items, users], dim=-1)

    @property
    def user_emb(self) -> tuple[FieldView, ...]:
        """Each user field's rows of the fused table (``.weight``, like an ``nn.Embedding``)."""
        return tuple(self.emb.view(f"user_emb.{i}.weight") for i in range(len(self.user_offsets)))

    @property
    def item_emb(self) -> tuple[FieldView, ...]:
        """Each categorical item field's rows of the fused table."""
        return tuple(self.emb.view(f"item_emb.{i}.weight") for i in range(self.item_table.shape[1]))

    @property
    def bag_emb(self) -> dict[str, FieldView]:
        """Each attribute bag's rows of the fused table (row 0: padding), by name."""
        return {n: self.emb.view(f"bag_emb.{n}.weight") for n in self.multi_names}

    def user_embed(self, user_cat: Tensor) -> Tensor:
        """(..., Fu) int64 categorical row(s) -> (..., Fu * E) user tower output."""
        if not len(self.user_offsets):
            return user_cat.new_zeros(*user_cat.shape[:-1], 0).float()
        return self.emb(user_cat + self.user_offsets).flatten(-2)  # one gather, (..., Fu, E)

    def item_embed(self, item_rows: Tensor) -> Tensor:
        """(..., K) int64 item rows -> (..., K, Ei) item tower output."""
        fi = self.item_table.shape[1]
        virtual, item_rows = item_rows, self.base_rows(item_rows)
        local = torch.cat([self.item_table[item_rows]]  # (..., K, Fi + sum of bag widths)
                          + [getattr(self, f"item_bag_{n}")[item_rows] for n in self.multi_names], -1)
        vecs = self.emb(local + self.item_offsets)  # one gather for every field and bag
        parts = [vecs[..., :fi, :].flatten(-2)] if fi else []
        start = fi
        for width in self.bag_widths:
            bag = local[..., start:start + width]  # (..., K, L)
            real = (bag != 0).unsqueeze(-1)  # (..., K, L, 1)
            # Mask explicitly rather than trusting padding_idx: under vmap/torch.func the
            # padding row can receive inner-loop gradients, so it must never be read.
            masked = vecs[..., start:start + width, :] * real  # (..., K, L, E)
            count = real.sum(-2).clamp(min=1).to(masked.dtype)
            parts.append(masked.sum(-2) / count)
            start += width
        if self.text_proj is not None:
            parts.append(self.text_proj(self.item_text[item_rows]))
        if self.stats_proj is not None:
            parts.append(self.stats_proj(self._fitted("stats", virtual)))
        if self.fac_proj is not None:
            parts.append(self.fac_proj(self._fitted("fac", virtual)))
        if self.id_emb is not None:
            parts.append(self.id_emb(item_rows) * self._fitted("known", virtual).unsqueeze(-1))
        out = torch.cat(parts, dim=-1)
        return out if self.item_norm is None else self.item_norm(out)

    @property
    def head_width(self) -> int:
        """Weights of the ridge head besides the bias: the last hidden width H, plus the item
        factors' width when ``head_factors``."""
        extra = self.item_fac.shape[1] if self.head_factors else 0
        return int(self.decision[-1].in_features) + extra

    def head_features(self, item_rows: Tensor) -> Tensor | None:
        """(..., K) item rows -> (..., K, f) item factors the ridge head adds to the last
        hidden features, or None without ``head_factors``."""
        return self._fitted("fac", item_rows) if self.head_factors else None

    @property
    def fits_training_ratings(self) -> bool:
        """Whether :meth:`fit_item_stats` has anything to fit (stats, ids or factors)."""
        return any(b is not None for b in (self.item_stats, self.item_known, self.item_fac))

    @torch.no_grad()
    def fit_item_stats(self, item_rows: Tensor, ratings: Tensor, shrinkage: float,
                       user_index: Tensor | None = None) -> None:
        """Fit the buffers that come from training ratings: ``item_stats``, ``item_known``
        (item ids) and ``item_fac`` (PureSVD factors, which need ``user_index``: the training
        user of each rating). A no-op when the model has none of them.

        Args:
            item_rows: (R,) int64 item rows of the training ratings; ratings: (R,) float.
            shrinkage: pseudo-ratings at the global mean added to every item's mean.
        Column 0 is ``log1p(count) / log1p(max count)`` in [0, 1]; column 1 the shrunk mean
        minus the global mean (rating units), or with ``item_debias`` = n > 0 the item effect
        b_i of the baseline predictor r = mu + b_u + b_i (Koren, TKDD 2010), fitted by n
        alternating sweeps of shrunk means (b_i over r - mu - b_u, then b_u over r - mu - b_i,
        both with ``shrinkage``): an item rated mostly by generous raters is not mistaken for a
        good one. Items without training ratings get (0, 0).
        """
        if not self.fits_training_ratings:
            return
        if ratings.numel() == 0:
            raise ValueError("fit_item_stats: no training ratings")
        if shrinkage < 0:
            raise ValueError(f"item_stats_shrinkage must be >= 0, got {shrinkage}")
        n = self.item_table.shape[0]
        rows = item_rows.long().cpu()
        r = ratings.double().cpu()
        if int(rows.min()) < 0 or int(rows.max()) >= n:
            raise ValueError(f"fit_item_stats: item rows outside 0..{n - 1}")
        count = torch.bincount(rows, minlength=n).double()
        mean = item_effects(rows, r, user_index, n, shrinkage, self.item_debias)
        if self.item_known is not None:
            self.item_known.copy_((count > 0).to(self.item_known))
        if self.item_fac is not None:
            if user_index is None:
                raise ValueError("fit_item_stats: item_factors need the user of every rating")
            users = user_index.long().cpu()
            fac = pure_svd(rows, r, users, n, self.item_fac.shape[1])
            fac = als_refine(rows, r, users, fac, self.item_factors_reg, self.item_factors_als)
            self.item_fac.copy_(fac.to(self.item_fac))
        if self.item_stats is None:
            return
        logc = torch.log1p(count) / torch.log1p(count.max())
        self.item_stats.copy_(torch.stack([logc, mean], 1).to(self.item_stats))

    # ------------------------------------------------------------------ decision MLP
    def decision_params(self) -> dict[str, Tensor]:
        """The decision MLP's parameters by their state_dict names (``decision.0.weight``...)."""
        return {f"{DECISION_PREFIX}{i}.{k}": getattr(layer, k)
                for i, layer in enumerate(self.decision) for k in ("weight", "bias")}

    def decide(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Decision MLP from explicit parameters: (..., K, feature_dim) -> (..., K) scores
        (:func:`metarec.adaptation.mlp.scores`, whose backward the ONNX export writes out)."""
        return mlp.scores(params, x, len(self.decision))

    def forward(self, user_cat: Tensor, item_rows: Tensor, feats: Tensor | None = None) -> Tensor:
        """Scores of (user, item) pairs: (..., Fu) users, (..., K) items -> (..., K) ratings.

        ``feats`` (..., K, feature_dim), when given, replaces the towers (precomputed by
        :meth:`embed`, as MeLU mode does once per batch).
        """
        x = self.embed(user_cat, item_rows) if feats is None else feats
        scores = self.decide(self.decision_params(), x)
        return scores + self.offset(item_rows) if self.item_offset else scores

    def offset(self, item_rows: Tensor) -> Tensor:
        """(..., K) item rows -> (..., K) additive score offset (zeros without item_offset):
        the item's effect (its shrunk mean rating minus the global mean, or the debiased b_i
        with ``item_debias``), from :meth:`fit_item_stats`."""
        if not self.item_offset:
            return torch.zeros(item_rows.shape, dtype=torch.float32, device=item_rows.device)
        return self._fitted("stats", item_rows)[..., 1]

    # ------------------------------------------------------------------ virtual rows
    def set_virtual_rows(self, base: Tensor, stats: Tensor | None = None,
                         fac: Tensor | None = None, known: Tensor | None = None) -> None:
        """Training-only item rows I..I+R-1 past the catalog's I: row I + j is item
        ``base[j]`` with its own fitted buffers (``stats`` (R, 2), ``fac`` (R, f), ``known``
        (R,); None: the item's). The training loop points each training rating at one, holding
        the item's statistics without that rating (:mod:`metarec.training.holdout`). Not in the
        state_dict: saved and exported models have only the catalog's rows."""
        n = self.item_table.shape[0]
        base = base.long().to(self.item_table.device)
        if base.ndim != 1 or (len(base) and (int(base.min()) < 0 or int(base.max()) >= n)):
            raise ValueError(f"virtual rows: base must be a vector of rows in 0..{n - 1}")
        for name, value, full in (("stats", stats, self.item_stats), ("fac", fac, self.item_fac),
                                  ("known", known, self.item_known)):
            if value is not None and (full is None or value.shape != (len(base), *full.shape[1:])):
                raise ValueError(f"virtual rows: {name} must match the model's item_{name} "
                                 f"with one row per virtual row")
            setattr(self, f"virtual_{name}", None if value is None else value.to(
                device=self.item_table.device, dtype=full.dtype))
        self.virtual_base = base

    def clear_virtual_rows(self) -> None:
        """Drop the rows of :meth:`set_virtual_rows`."""
        for name in ("virtual_base", "virtual_stats", "virtual_fac", "virtual_known"):
            setattr(self, name, None)

    def base_rows(self, item_rows: Tensor) -> Tensor:
        """Item rows with virtual rows mapped to their catalog item."""
        if self.virtual_base is None:
            return item_rows
        n = self.item_table.shape[0]
        return torch.where(item_rows >= n, self.virtual_base[(item_rows - n).clamp(min=0)],
                           item_rows)

    def _fitted(self, name: str, item_rows: Tensor) -> Tensor:
        """``item_<name>`` (stats, fac or known) of rows that may be virtual."""
        full = getattr(self, f"item_{name}")
        virtual = getattr(self, f"virtual_{name}")
        if self.virtual_base is None:
            return full[item_rows]
        n = self.item_table.shape[0]
        at = full[self.base_rows(item_rows)]
        if virtual is None:
            return at
        own = virtual[(item_rows - n).clamp(min=0)]
        is_virtual = item_rows >= n
        return torch.where(is_virtual if at.ndim == item_rows.ndim else is_virtual.unsqueeze(-1),
                           own, at)


def _check_table(name: str, table: Tensor, cardinality: tuple[int, ...]) -> None:
    if table.ndim != 2 or table.shape[1] != len(cardinality):
        raise ValueError(f"{name}: expected shape (rows, {len(cardinality)}), got {tuple(table.shape)}")
    if table.numel() and int(table.min()) < 0:
        raise ValueError(f"{name}: negative index {int(table.min())}")
    for f, card in enumerate(cardinality):
        if table.shape[0] and int(table[:, f].max()) >= card:
            raise ValueError(f"{name}: column {f} has index {int(table[:, f].max())} "
                             f">= its cardinality {card}")


def resolve_head_factors(cfg: ModelConfig, on: bool) -> ModelConfig:
    """``cfg`` with ``head_factors`` decided: on, the ridge head reads the item factors; off,
    the model has no item factors at all unless its item tower reads them (``tower_factors``)."""
    return dataclasses.replace(cfg, head_factors=bool(on), item_factors=(
        cfg.item_factors if on or cfg.tower_factors else 0))


# ModelConfig fields handed to the Estimator unchanged, by the same name.
_MODEL_SETTINGS = ("embedding_dim", "text_proj_dim", "item_stats", "item_stats_shrinkage",
                   "item_stats_from", "item_norm", "embedding_std", "item_offset", "item_id",
                   "item_factors", "head_factors", "tower_factors", "item_factors_als",
                   "item_factors_reg", "item_debias")


def build_model(features: FeatureArrays, cfg: ModelConfig) -> Estimator:
    """An :class:`Estimator` sized from the features' cardinalities and ``cfg``.

    ``model.head_factors: auto`` builds the model without the factor head (as
    :func:`resolve_head_factors` with ``on=False``): training chooses (metarec.training.selection)
    and records the choice, and loading a trained model resolves it from there first.
    """
    if cfg.head_factors == "auto":
        cfg = resolve_head_factors(cfg, False)
    text = None
    if cfg.use_text and features.item_text is not None:
        text = torch.as_tensor(features.item_text, dtype=torch.float32)
    return Estimator(
        user_cat=torch.as_tensor(features.user_cat, dtype=torch.long),
        user_cardinality=tuple(int(c) for c in features.user_cardinality),
        item_cat=torch.as_tensor(features.item_cat, dtype=torch.long),
        item_cardinality=tuple(int(c) for c in features.item_cardinality),
        item_multi={k: torch.as_tensor(v, dtype=torch.long) for k, v in features.item_multi.items()},
        item_multi_cardinality=dict(features.item_multi_cardinality),
        item_text=text,
        hidden=tuple(cfg.hidden),
        **{name: getattr(cfg, name) for name in _MODEL_SETTINGS},
    )
