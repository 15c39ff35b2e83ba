"""Library steps of the pipeline that are not a single module's concern (the Dagster assets and
the CLI call them)."""

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
