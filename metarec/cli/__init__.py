"""The `metarec` command line. Every command is a thin call into a library function; the
commands live by concern in :mod:`.data` (data, features and tasks stages), :mod:`.model`
(train, evaluate, export, register), :mod:`.registry` (models, promote, rollback),
:mod:`.serving` (recommend, serve), :mod:`.tune` (tune), :mod:`.items` (the item
catalog) and :mod:`.feedback` (feedback add/show, data ingest). `metarec pipeline` is
contributed by orchestration/ through the `metarec.cli` entry point, so the library never
imports the orchestrator.
"""

from __future__ import annotations

from pathlib import Path

import click

from metarec.cli import data as _data
from metarec.cli import items as _items
from metarec.cli import feedback as _feedback
from metarec.cli import model as _model
from metarec.cli import registry as _registry
from metarec.cli import serving as _serving
from metarec.cli import tune as _tune
from metarec.cli.common import setup_logging
from metarec.config import default_params_path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The configuration file (default: $METAREC_PARAMS, else params.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, params: Path | None, verbose: bool) -> None:
    """metarec: cold-start recommendation by meta-learning, from data to served model."""
    setup_logging(verbose)
    ctx.obj = {"params": params if params is not None else default_params_path()}


for _command in (_data.data, _data.features, _data.tasks, _model.train_cmd,
                 _model.evaluate_cmd, _model.export_cmd, _model.register_cmd,
                 _registry.models_cmd, _registry.promote_cmd, _registry.rollback_cmd,
                 _serving.recommend_cmd, _serving.serve_cmd, _tune.tune_cmd, _items.items,
                 _feedback.feedback):
    main.add_command(_command)
_data.data.add_command(_feedback.ingest_cmd)


def _load_plugins(group: click.Group) -> None:
    """Add the commands other packages register under the `metarec.cli` entry point."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="metarec.cli"):
        if ep.name not in group.commands:
            group.add_command(ep.load(), ep.name)


_load_plugins(main)


if __name__ == "__main__":  # pragma: no cover
    main()
