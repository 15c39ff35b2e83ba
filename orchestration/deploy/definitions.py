"""The production code location: the same assets, checks, jobs, schedule and sensor as
``orchestration.definitions``, with the step executor chosen by ``METAREC_EXECUTOR``:

- ``multiprocess`` (default): every step a process inside the run's worker (with the
  DockerRunLauncher: inside the run container, which sees the host's GPUs);
- ``k8s``: every step its own Kubernetes pod (dagster-k8s ``k8s_job_executor``, which inherits
  image, namespace and environment from the K8sRunLauncher); ``meta_model``'s
  ``dagster-k8s/config`` tag gives its pod one ``nvidia.com/gpu``;
- ``docker``: every step its own container of the run launcher's image (dagster-docker).

Load it with ``dagster code-server start -m orchestration.deploy.definitions`` (or a
workspace.yaml naming this module) from the repo root; resources come from the environment
when METAREC_ENV=production (orchestration.resources.production_resources).
"""

from __future__ import annotations

import os

import dagster as dg

from metarec.config import default_params_path
from orchestration.assemble import build_definitions

EXECUTORS = ("multiprocess", "in_process", "k8s", "docker")


def executor_for(name: str) -> dg.ExecutorDefinition:
    """The Dagster executor called ``name`` (one of EXECUTORS); k8s and docker need the
    `scale` extra (dagster-k8s, dagster-docker)."""
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name == "docker":
        from dagster_docker import docker_executor

        return docker_executor
    raise ValueError(f"METAREC_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}")


def build_deploy_definitions(params: str | None = None,
                             executor: str | None = None) -> dg.Definitions:
    """orchestration.definitions' Definitions with the executor ``executor`` (default:
    METAREC_EXECUTOR, else multiprocess) for every job; params default: METAREC_PARAMS."""
    params = str(params or default_params_path())
    executor = executor or os.environ.get("METAREC_EXECUTOR", "multiprocess")
    return dg.Definitions.merge(build_definitions(params),
                                dg.Definitions(executor=executor_for(executor)))


defs = build_deploy_definitions()
