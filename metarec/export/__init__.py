"""ONNX export with the adaptation inside the graph, and its parity check against PyTorch.

- :mod:`~metarec.export.runtime`: file names, graph inputs and ONNX Runtime sessions
  (torch-free: serving imports it);
- :mod:`~metarec.export.onnx_graph`: the two graphs of a model (the adaptation emitted by
  :mod:`metarec.adaptation`);
- :mod:`~metarec.export.artifacts`: :func:`export_onnx`, the graphs and ``metadata.json``;
- :mod:`~metarec.export.parity`: :func:`parity_check` and its :class:`ParityReport`.

The names below load lazily (PEP 562), so that importing ``metarec.export.runtime`` for
serving never imports torch or onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from metarec.export.artifacts import DEFAULT_OPSET, ExportResult, export_onnx
    from metarec.export.parity import ParityReport, parity_check
    from metarec.export.runtime import (ADAPT_INPUTS, METADATA_FILE, MODEL_FILE, PARITY_FILE,
                                        SCORER_FILE, SCORER_INPUTS)

_LAZY = {"export_onnx": "artifacts", "ExportResult": "artifacts", "DEFAULT_OPSET": "artifacts",
         "parity_check": "parity", "ParityReport": "parity",
         "METADATA_FILE": "runtime", "MODEL_FILE": "runtime", "SCORER_FILE": "runtime",
         "PARITY_FILE": "runtime", "ADAPT_INPUTS": "runtime", "SCORER_INPUTS": "runtime"}
__all__ = ["export_onnx", "ExportResult", "DEFAULT_OPSET", "parity_check", "ParityReport",
           "METADATA_FILE", "MODEL_FILE", "SCORER_FILE", "PARITY_FILE", "ADAPT_INPUTS",
           "SCORER_INPUTS"]  # literal, so that linters see the lazy names as exported


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'metarec.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"metarec.export.{_LAZY[name]}"), name)
