"""What a runtime needs of an export, torch-free: file names, graph inputs, ONNX Runtime sessions.

:mod:`metarec.serve` and the parity check (:mod:`metarec.export.parity`) both open their
sessions here, so that session options and providers are written once. Importing this module
imports the standard library only; ``onnxruntime`` is imported when a session is made.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

MODEL_FILE = "model.onnx"
SCORER_FILE = "scorer.onnx"
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
# The catalog path (metarec.export.item_graph, metarec.export.user_graph, metarec.catalog):
ITEM_ENCODER_FILE = "item_encoder.onnx"
USER_FILE = "user.onnx"
SCORE_FILE = "score.onnx"
CATALOG_DIR = "catalog"  # the export's own catalog: version 1, the items it was trained with
# 3: the catalog graphs and catalog/ beside model.onnx ("catalog" entry); 2: "adaptation" is a
# structured entry (Adaptation.to_dict); 1: a string
FORMAT_VERSION = 3
ADAPT_INPUTS = ("user_cat", "support_items", "support_ratings", "support_mask", "candidate_items")
SCORER_INPUTS = ("user_cat", "candidate_items")
CPU = ["CPUExecutionProvider"]


def gpu_present() -> bool:
    """A quiet GPU check: an NVIDIA device node or nvidia-smi, never a CUDA session attempt."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def choose_providers() -> list[str]:
    """CUDA then CPU when a GPU is present and onnxruntime-gpu has CUDA; else CPU only."""
    import onnxruntime as ort

    if gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", *CPU]
    return list(CPU)


def session(path: str | Path, *, threads: int = 1, providers: Sequence[str] = CPU) -> Any:
    """An ONNX Runtime session with ``threads`` intra-op threads (0: its default), one
    inter-op thread and warnings silenced (no provider warnings on every load)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
