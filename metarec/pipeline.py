"""The pipeline as a sequence of library steps, for `metarec pipeline run`.

Each step is one library call; the same calls back the Dagster assets. A step's failure stops
the run before anything downstream is built.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metarec.config import Config
from metarec.dvc import dir_md5, read_dvc_file

log = logging.getLogger(__name__)


def ensure_data(cfg: Config, root: Path) -> str:
    """Fetch the dataset unless data/ already holds the version data.dvc records."""
    from metarec.data.fetch import fetch

    data_dir = root / cfg.data.raw_dir
    dvc_file = root / f"{cfg.data.raw_dir}.dvc"
    if data_dir.is_dir() and dvc_file.exists():
        md5 = dir_md5(data_dir)
        if md5 == read_dvc_file(dvc_file).md5:
            return f"{data_dir} matches {dvc_file} ({md5})"
    res = fetch(cfg.data, root=root)
    return f"fetched {cfg.data.dataset} into {res.data_dir} ({res.md5})"


def run_pipeline(cfg: Config, params_path: str | Path = "params.yaml",
                 root: str | Path = ".") -> dict[str, str]:
    """Run every step in order; returns a one-line summary per step."""
    from metarec.data.prepare import prepare_dataset

    root = Path(root)
    summary: dict[str, str] = {}
    summary["data"] = ensure_data(cfg, root)
    log.info("data: %s", summary["data"])
    tables = prepare_dataset(cfg, root)
    summary["prepare"] = f"{tables.summary()} -> {cfg.data.prepared_dir}"
    return summary
