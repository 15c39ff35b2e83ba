"""Loading params.yaml strictly into the frozen dataclasses of :mod:`metarec.config.sections`.

An unknown key, a missing required key or a value of the wrong type is a :class:`ConfigError`
that names the key by its dotted path (``tasks.query_size``), so a typo never silently falls
back to a default. Which file: the one the user named (CLI ``--params``, the Dagster resource),
else ``$METAREC_PARAMS``, else ``params.yaml`` (:func:`default_params_path`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from metarec.config.overrides import OverridesError, merge, overrides_in_use
from metarec.config.sections import Config

DEFAULT_PARAMS = Path("params.yaml")
PARAMS_ENV = "METAREC_PARAMS"


class ConfigError(ValueError):
    """A params.yaml problem; the message names the offending key."""


def default_params_path() -> Path:
    """``$METAREC_PARAMS`` when set (and not empty), else ``params.yaml``."""
    return Path(os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS)


def load_config(path: str | Path | None = None, *, overrides: bool = True) -> Config:
    """Read ``path`` (default: :func:`default_params_path`) into a :class:`Config`; a missing
    file is a :class:`ConfigError`.

    With ``tune.use_overrides: true`` and ``tune.overrides_file`` present, that file (the
    reviewed result of `metarec tune`) is laid over the params first (``overrides=False``:
    the params file alone, what a tuning study starts from).
    """
    path = default_params_path() if path is None else Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    cfg = config_from_dict(raw, source=str(path))
    if not overrides:
        return cfg
    try:
        found = overrides_in_use(cfg.tune.use_overrides, cfg.tune.overrides_file)
    except OverridesError as exc:
        raise ConfigError(str(exc)) from None
    if found is None:
        return cfg
    return config_from_dict(merge(raw, found.values), source=f"{path} + {found.path}")


def config_from_dict(raw: Mapping[str, Any], source: str = "params") -> Config:
    """Build a :class:`Config` from a nested mapping, strictly (see module docstring)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        cfg = _build(Config, raw, "")
        _check_space(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def setting_type(key: str, where: str) -> Any:
    """The type of the setting at dotted ``key`` (``meta.inner_lr``); a key that names no
    setting (or a whole section, or the ``tune`` section itself) is a :class:`ConfigError`
    naming ``where``."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"'{where}': {'.'.join(parts[:i])!r} is a setting, not a section")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            prefix = ".".join(parts[:i]) or "<top>"
            raise ConfigError(f"'{where}': no setting {key!r} (allowed under '{prefix}': "
                              f"{', '.join(sorted(hints))})")
        cls = hints[part]
    if parts[0] == "tune" or dataclasses.is_dataclass(cls):
        raise ConfigError(f"'{where}': {key!r} cannot be searched (a section, or the study's own "
                          "settings)")
    return cls


def _check_space(cfg: Config) -> None:
    """Each key of ``tune.space`` names a setting, and each bound and choice is a value that
    setting accepts (checked like the setting itself), so a typo fails at load time."""
    for key, rng in cfg.tune.space.items():
        where = f"tune.space.{key}"
        tp = setting_type(key, where)
        bounds = {"low": rng.low, "high": rng.high, "step": rng.step}
        if rng.type == "categorical":
            if not rng.choices or any(v is not None for v in bounds.values()):
                raise ConfigError(f"'{where}': categorical takes a non-empty 'choices' list "
                                  "and no low/high/step")
            for i, choice in enumerate(rng.choices):
                _coerce(tp, choice, f"{where}.choices[{i}]")
            continue
        if rng.choices or rng.low is None or rng.high is None or not rng.low < rng.high:
            raise ConfigError(f"'{where}': {rng.type} takes low < high and no choices, got "
                              f"low={rng.low}, high={rng.high}, choices={list(rng.choices)}")
        if rng.type == "log-float" and (rng.low <= 0 or rng.step is not None):
            raise ConfigError(f"'{where}': log-float takes low > 0 and no step")
        if rng.step is not None and rng.step <= 0:
            raise ConfigError(f"'{where}.step' must be positive, got {rng.step}")
        for name, value in bounds.items():
            if value is None:
                continue
            if rng.type == "int" and not float(value).is_integer():
                raise ConfigError(f"'{where}.{name}' must be an integer, got {value!r}")
            if name != "step":
                _coerce(tp, int(value) if rng.type == "int" else value, f"{where}.{name}")


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        raise ConfigError(f"unknown key {names} (allowed under '{prefix or '<top>'}': "
                          f"{', '.join(sorted(known))})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:  # noqa: C901 - one branch per type form
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return _build(tp, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}': {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"'{key}': unsupported type {tp}")  # a bug in this file, not in params
