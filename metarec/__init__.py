"""metarec: cold-start recommendation by meta-learning (MAML family, MeLU-style adaptation).

The library holds all logic as plain functions and small classes; ``orchestration/`` wires them
into Dagster and ``metarec.cli`` exposes them on the command line. Heavy dependencies (torch,
Great Expectations, MLflow, DVC) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
