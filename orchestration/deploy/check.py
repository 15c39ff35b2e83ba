"""Validate a production dagster.yaml without its cluster: the file against Dagster's instance
schema, the Postgres storage and the run launcher against their classes' own config schemas,
with every ``{env: VAR}`` resolved (a missing variable is an error naming it).

    python -m orchestration.deploy.check orchestration/deploy/k8s/dagster.yaml
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config


@dataclass(frozen=True)
class InstanceSettings:
    """What a validated instance file resolves to (the Postgres password is not kept)."""

    postgres: Mapping[str, Any]     # hostname, port, username, db_name
    run_launcher: str               # "module.Class"
    launcher_config: Mapping[str, Any]
    max_concurrent_runs: int | None


class InstanceConfigError(ValueError):
    """A production instance file that Dagster would reject; the message says what and where."""


def _resolve(schema: Any, value: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    result = process_config(resolve_to_config_type(schema), value)
    if not result.success:
        details = [e.message.split("\n\nStack Trace")[0].split("PostProcessingError: ")[-1]
                   for e in result.errors]
        raise InstanceConfigError(f"{what}:\n  " + "\n  ".join(details))
    return result.value


def launcher_class(module: str, name: str) -> type:
    """The run launcher class ``module.name`` (its package must be installed)."""
    return getattr(importlib.import_module(module), name)


def validate_instance_yaml(path: str | Path) -> InstanceSettings:
    """Check ``path`` as Dagster would load it; raise InstanceConfigError (a schema error:
    DagsterInvalidConfigError; a missing file: FileNotFoundError) naming what is wrong.
    Connects to nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    cfg, _ = dagster_instance_config(str(path.parent), path.name)
    storage = cfg.get("storage") or {}
    if "postgres" not in storage:
        raise InstanceConfigError(f"{path}: storage must be postgres, got "
                                  f"{sorted(storage) or 'the default (SQLite)'}")
    pg = _resolve(pg_config(), storage["postgres"], f"{path}: storage.postgres")
    db = pg.get("postgres_db") or {}
    launcher = cfg.get("run_launcher")
    if not launcher:
        raise InstanceConfigError(f"{path}: no run_launcher")
    klass = launcher_class(launcher["module"], launcher["class"])
    resolved = _resolve(klass.config_type(), launcher.get("config") or {},
                        f"{path}: run_launcher {launcher['class']}")
    queue = cfg.get("run_queue") or {}
    return InstanceSettings(
        postgres={k: db[k] for k in ("hostname", "port", "username", "db_name") if k in db},
        run_launcher=f"{launcher['module']}.{launcher['class']}", launcher_config=resolved,
        max_concurrent_runs=queue.get("max_concurrent_runs"))


def main(argv: list[str] | None = None) -> int:
    """Validate each file named on the command line; exit status 1 on the first invalid one."""
    for name in (argv if argv is not None else sys.argv[1:]):
        try:
            settings = validate_instance_yaml(name)
        except (InstanceConfigError, DagsterInvalidConfigError, FileNotFoundError) as exc:
            sys.stderr.write(f"INVALID {exc}\n")
            return 1
        sys.stdout.write(f"{name}: ok ({settings.run_launcher}, postgres "
                         f"{settings.postgres.get('hostname')}:{settings.postgres.get('port')}/"
                         f"{settings.postgres.get('db_name')})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
