"""Production deployment of the Dagster code location: instance configurations for Docker and
Kubernetes (docker/dagster.yaml, k8s/dagster.yaml, Postgres storage), the code location with a
step executor chosen by METAREC_EXECUTOR (definitions.py) and a validator for the instance
files that needs no cluster (check.py)."""
