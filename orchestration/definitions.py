"""The Dagster code location of metarec (`dagster dev` from the repo root loads it through
pyproject.toml's [tool.dagster]); its params file: $METAREC_PARAMS, else params.yaml."""

from orchestration.assemble import build_definitions

defs = build_definitions()
