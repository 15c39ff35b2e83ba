"""Evaluation stage: metrics, scoring of methods on scenarios, the report and the gate.

- :mod:`~metarec.evaluation.metrics`: per-task metric functions (mae, rmse, nDCG, precision);
- :mod:`~metarec.evaluation.scoring`: bootstrap intervals, adaptation curves and their paired
  differences to each baseline, ``evaluate_all``;
- :mod:`~metarec.evaluation.report`: the :class:`Report` (JSON round trip, report.md);
- :mod:`~metarec.evaluation.plots` and :mod:`~metarec.evaluation.output`: PNG plots and the
  report folder written by ``write_report``;
- :mod:`~metarec.evaluation.gate`: the registration gate, a pure verdict on a report's curve.

Import from the modules; this package re-exports nothing.
"""
