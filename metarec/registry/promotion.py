"""Moving ``champion``: promotion and rollback, each re-checking the version's stored verdict.

Every move is recorded in the registered model's ``champion_history`` tag (a JSON list, oldest
first); a rollback replays that history to find the champion before the current one.
"""

from __future__ import annotations

import getpass
import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from metarec.config import TrackingConfig
from metarec.registry.tracking import client, now_iso
from metarec.registry.versions import (CHALLENGER, CHAMPION, RegistryError, aliases,
                                       stored_verdict)

log = logging.getLogger(__name__)

HISTORY_TAG = "champion_history"


@dataclass(frozen=True)
class Promotion:
    """A move of ``champion``: from ``previous`` (None: first champion) to ``version``."""

    version: int
    previous: int | None
    action: str
    actor: str
    at: str


def history(cfg: TrackingConfig, mlc=None) -> list[dict[str, Any]]:
    """The registered model's champion history (oldest first)."""
    mlc = mlc or client(cfg)
    raw = mlc.get_registered_model(cfg.registered_model).tags.get(HISTORY_TAG, "[]")
    return json.loads(raw)


def _champion_stack(entries: list[Mapping[str, Any]]) -> list[int]:
    """Replay the history: a promotion pushes its version, a rollback pops the top one."""
    stack: list[int] = []
    for e in entries:
        if e["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(int(e["version"]))
    return stack


def _check_verdict(mlc, name: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mv = mlc.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} version {version}: not found") from exc
    verdict = stored_verdict(mv.tags or {})
    if verdict is None or not verdict.passed or not verdict.consistent():
        raise RegistryError(f"{name} version {version}: its stored gate verdict did not pass; "
                            "refusing to make it champion")


def _move_champion(cfg: TrackingConfig, mlc, version: int, previous: int | None, action: str,
                   actor: str | None, entries: list[dict[str, Any]]) -> Promotion:
    name = cfg.registered_model
    _check_verdict(mlc, name, version)
    done = Promotion(version, previous, action, actor or getpass.getuser(), now_iso())
    mlc.set_registered_model_alias(name, CHAMPION, str(version))
    mlc.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries + [done.__dict__]))
    for key, value in (("promoted_by", done.actor), ("promoted_at", done.at),
                       ("promoted_from", str(previous)), ("promotion", action)):
        mlc.set_model_version_tag(name, str(version), key, value)
    log.info("%s: champion %s -> %s (%s by %s)", name, previous, version, action, done.actor)
    return done


def promote(cfg: TrackingConfig, version: int | None = None,
            actor: str | None = None) -> Promotion:
    """Point ``champion`` at ``version`` (default: the challenger), re-checking its verdict."""
    mlc = client(cfg)
    current = aliases(cfg, mlc)
    if version is None:
        if CHALLENGER not in current:
            raise RegistryError(f"{cfg.registered_model}: no challenger to promote")
        version = current[CHALLENGER]
    if current.get(CHAMPION) == version:
        raise RegistryError(f"{cfg.registered_model} version {version} is already champion")
    done = _move_champion(cfg, mlc, version, current.get(CHAMPION), "promote", actor,
                          history(cfg, mlc))
    if current.get(CHALLENGER) == version:
        mlc.delete_registered_model_alias(cfg.registered_model, CHALLENGER)
    return done


def rollback(cfg: TrackingConfig, actor: str | None = None) -> Promotion:
    """Point ``champion`` back at the champion before the current one (from the history)."""
    mlc = client(cfg)
    current = aliases(cfg, mlc).get(CHAMPION)
    entries = history(cfg, mlc) if current is not None else []
    stack = _champion_stack(entries)
    if current is None or not stack:
        raise RegistryError(f"{cfg.registered_model}: no champion to roll back")
    if stack[-1] != current:
        raise RegistryError(f"{cfg.registered_model}: champion is version {current} but the "
                            f"history says {stack[-1]}; the alias was moved outside metarec")
    if len(stack) < 2:
        raise RegistryError(f"{cfg.registered_model}: version {current} is the first champion; "
                            "there is nothing to roll back to")
    return _move_champion(cfg, mlc, stack[-2], current, "rollback", actor, entries)
