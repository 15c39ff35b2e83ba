"""What every `metarec` command shares: logging, the run's configuration, error reporting."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import click

from metarec.config import Config, ConfigError, load_config


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("dvc", "great_expectations", "urllib3", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def config_of(ctx: click.Context) -> Config:
    """The configuration of this invocation: the file `--params` named (else $METAREC_PARAMS,
    else params.yaml), loaded once and shared by every command of the invocation."""
    obj = ctx.find_root().obj
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj["params"])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    return obj["config"]


def fail(exc: Exception) -> click.ClickException:
    """A library error as a one-line CLI error naming its kind (no traceback)."""
    return click.ClickException(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def reported(*kinds: type[Exception]) -> Iterator[None]:
    """Turn the library's expected errors (``ValueError``, ``RuntimeError``, ``OSError`` and
    any ``kinds``) raised in the block into one-line CLI errors; anything else is a bug and
    keeps its traceback."""
    try:
        yield
    except (ValueError, RuntimeError, OSError, *kinds) as exc:
        raise fail(exc) from None
