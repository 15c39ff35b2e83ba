"""The one configuration of metarec: params.yaml, loaded once per run into frozen dataclasses.

- :mod:`metarec.config.sections`: one dataclass per section; defaults equal params.yaml;
- :mod:`metarec.config.loader`: strict loading (:func:`load_config`, :class:`ConfigError`).

The names below are the package's public surface: ``from metarec.config import MetaConfig``.
"""

from metarec.config.loader import (DEFAULT_PARAMS, PARAMS_ENV, ConfigError, config_from_dict,
                                   default_params_path, load_config)
from metarec.config.catalog import CatalogConfig
from metarec.config.implicit import FullCatalogConfig, ImplicitRule
from metarec.config.sections import (ColumnMap, Config, CsvSource, DataConfig, EvaluationConfig,
                                     ExportConfig, FeaturesConfig, FeedbackConfig,
                                     GateConfig, MetaConfig,
                                     ModelConfig, ScheduleConfig, ServeConfig, TasksConfig,
                                     TrackingConfig, TrainConfig, ValidationConfig)
from metarec.config.tune import ParamRange, TuneConfig, TuneObjective

__all__ = ["DEFAULT_PARAMS", "PARAMS_ENV", "CatalogConfig", "ColumnMap", "Config", "ConfigError",
           "CsvSource", "DataConfig", "EvaluationConfig", "ExportConfig", "FeaturesConfig", "FullCatalogConfig", "ImplicitRule",
           "FeedbackConfig", "GateConfig", "MetaConfig", "ModelConfig", "ParamRange",
           "ScheduleConfig", "ServeConfig", "TasksConfig", "TrackingConfig", "TrainConfig",
           "TuneConfig", "TuneObjective", "ValidationConfig", "config_from_dict",
           "default_params_path", "load_config"]
