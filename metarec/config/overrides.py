"""The tuned overrides file (``tune.overrides_file``, default params.tuned.yaml), read back.

`metarec tune` writes the best trial's settings there (:mod:`metarec.tuning.overrides`): a
YAML mapping shaped like params.yaml holding only the changed keys, headed by ``# name: value``
comment lines that say where they came from (study, trial, CV score). A person reviews it; with
``tune.use_overrides: true`` the loader merges it over params.yaml, so every command of a run
(train, evaluate, export, the Dagster jobs) uses the same settings, and the training's MLflow
run records which overrides it used (:func:`applied_overrides`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

_META = re.compile(r"^#\s*([a-z_]+):\s*(.*?)\s*$")


class OverridesError(ValueError):
    """The overrides file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TunedOverrides:
    """One overrides file: its nested ``values``, header ``meta`` and content hash."""

    path: str
    values: dict[str, Any]
    meta: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    def flat(self) -> dict[str, Any]:
        """``{"meta.inner_lr": 0.01, ...}``: the values by dotted key."""
        return flatten(self.values)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{dotted.key: leaf}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted.key: value}`` -> the nested mapping params.yaml would hold."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mapping by mapping (``extra`` wins at the leaves)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_overrides(path: str | Path) -> TunedOverrides:
    """Parse an overrides file; a file that is not a mapping, or that sets ``tune.*`` (the
    study's own settings), is an :class:`OverridesError`."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OverridesError(f"{path}: not valid YAML: {exc}") from exc
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise OverridesError(f"{path}: must be a mapping like params.yaml, got "
                             f"{type(values).__name__}")
    if "tune" in values:
        raise OverridesError(f"{path}: may not set the 'tune' section (the study's settings)")
    meta = {}
    for line in text.splitlines():
        found = _META.match(line)
        if found:
            meta.setdefault(found.group(1), found.group(2))
    return TunedOverrides(str(path), values, meta, hashlib.sha256(text.encode()).hexdigest())


def overrides_in_use(use: bool, file: str) -> TunedOverrides | None:
    """The overrides a configuration with ``tune.use_overrides = use`` and
    ``tune.overrides_file = file`` trains with: the file when ``use`` and it exists, else None."""
    if not use or not Path(file).is_file():
        return None
    return read_overrides(file)


def applied_overrides(cfg) -> TunedOverrides | None:
    """What :func:`metarec.config.load_config` merged into ``cfg`` (a Config), if anything."""
    return overrides_in_use(cfg.tune.use_overrides, cfg.tune.overrides_file)


def overrides_tags(cfg) -> dict[str, str]:
    """MLflow tags naming the overrides a training of ``cfg`` used (``none`` when none)."""
    import json

    found = applied_overrides(cfg)
    if found is None:
        return {"tune_overrides": "none"}
    tags = {"tune_overrides": json.dumps(found.flat(), sort_keys=True)[:6000],
            "tune_overrides_file": found.path, "tune_overrides_sha256": found.sha256}
    tags.update({f"tune_{k}": v for k, v in found.meta.items()
                 if k in ("study", "trial", "storage")})
    return tags
