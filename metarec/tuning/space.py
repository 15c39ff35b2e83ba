"""The search space of ``tune.space``: sampling a trial's settings and applying them.

The loader has already checked every key and bound against the Config
(:func:`metarec.config.loader._check_space`); here the ranges become Optuna distributions.
Categorical choices Optuna cannot store (lists such as ``model.hidden``'s ``[64, 64]``) are
offered to it as their JSON text and decoded back, so the study's records stay readable.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from metarec.config import Config, ConfigError, ParamRange, config_from_dict
from metarec.config.overrides import flatten, merge, nest

_SCALARS = (str, int, float, bool, type(None))


def _encode(choice: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, anything else as JSON text."""
    return choice if isinstance(choice, _SCALARS) else json.dumps(choice)


def _decode(value: Any, rng: ParamRange) -> Any:
    """Back from Optuna's stored form to the choice of ``rng`` (lists stay lists)."""
    for choice in rng.choices:
        if _encode(choice) == value:
            return choice
    raise ValueError(f"{value!r} is none of the choices {list(rng.choices)}")


def suggest(trial, space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """One trial's settings, ``{"meta.inner_lr": 0.012, ...}``, drawn by ``trial``'s sampler
    (an ``optuna.Trial``; an enqueued trial gets its fixed values)."""
    out: dict[str, Any] = {}
    for key, rng in space.items():
        if rng.type == "categorical":
            raw = trial.suggest_categorical(key, [_encode(c) for c in rng.choices])
            out[key] = _decode(raw, rng)
        elif rng.type == "int":
            out[key] = trial.suggest_int(key, int(rng.low), int(rng.high),
                                         step=int(rng.step or 1))
        else:
            out[key] = trial.suggest_float(key, rng.low, rng.high, step=rng.step,
                                           log=rng.type == "log-float")
    return out


def decode_params(params: Mapping[str, Any], space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """A stored trial's ``params`` (Optuna's form) as settings (lists decoded)."""
    return {k: _decode(v, space[k]) if k in space and space[k].type == "categorical" else v
            for k, v in params.items()}


def current_values(cfg: Config, space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """What ``cfg`` sets for every key of the space (tuples as lists, as params.yaml writes)."""
    flat = flatten(_plain(cfg.to_dict()))
    return {key: flat[key] for key in space}


def reference_params(cfg: Config, space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """The current settings as a point of the space, in Optuna's form: the study's first
    trial. A current value outside its range is an error naming the key (the study always
    measures where it starts from, so the best trial can be compared with it)."""
    out = {}
    for key, value in current_values(cfg, space).items():
        rng = space[key]
        if rng.type == "categorical":
            if value not in [_plain(c) for c in rng.choices]:
                raise ConfigError(f"'tune.space.{key}': the current setting {value!r} is not "
                                  f"among the choices {list(rng.choices)}")
            out[key] = _encode(value)
        elif value is None or not rng.low <= value <= rng.high:
            raise ConfigError(f"'tune.space.{key}': the current setting {value!r} lies outside "
                              f"[{rng.low}, {rng.high}]")
        else:
            out[key] = int(value) if rng.type == "int" else float(value)
    return out


def with_params(cfg: Config, params: Mapping[str, Any], source: str = "trial") -> Config:
    """``cfg`` with the dotted-key ``params`` set (validated like params.yaml)."""
    return config_from_dict(merge(_plain(cfg.to_dict()), nest(dict(params))), source)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML's and JSON's view of a Config)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
