"""Lineage facts every model version carries: the dataset version (DVC) and the code version."""

from __future__ import annotations

import subprocess
from pathlib import Path

from metarec.config import DataConfig


def git_sha(root: str | Path = ".") -> str | None:
    """The code version: HEAD's sha (with "-dirty" when the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def dataset_hash_or_none(data_cfg: DataConfig, root: str | Path = ".") -> str | None:
    """The md5 that ``data.dvc_file`` records when the file exists (lineage tag), else None."""
    from metarec.dvc import dataset_hash

    path = Path(root) / data_cfg.dvc_file
    return dataset_hash(path) if path.exists() else None
