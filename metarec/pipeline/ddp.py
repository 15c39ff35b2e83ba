"""torchrun entry point of the train stage: every rank meta-trains the configured learner on
its slice of each batch (:mod:`metarec.training.distributed`); rank 0 writes and logs.

    torchrun --nproc_per_node=4 -m metarec.pipeline.ddp --params params.yaml
"""

from __future__ import annotations

import argparse
import logging

import torch.distributed as dist

from metarec.config import load_config
from metarec.pipeline.train import train_meta_model
from metarec.training.distributed import init_from_env

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: meta-train the configured learner on every rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None,
                        help="params file (default: $METAREC_PARAMS, else params.yaml)")
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(process)d %(message)s")
    world = init_from_env()
    try:
        summary = train_meta_model(load_config(args.params), resume=not args.no_resume,
                                   world=world)
        if world is None or world.is_main:
            log.info("best validation MAE %.4f at step %d", summary["best_valid_mae"],
                     summary["best_step"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    main()
