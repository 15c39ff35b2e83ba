"""The data stage that precedes preparation: make ``data/`` hold the version DVC records."""

from __future__ import annotations

from pathlib import Path

from metarec.config import DataConfig
from metarec.dvc import dir_md5, read_dvc_file
from metarec.io import clean_stale_staging


def ensure_data(data_cfg: DataConfig, root: Path) -> str:
    """Fetch the dataset unless ``data.raw_dir`` already holds the version ``data.dvc_file``
    records; returns what was done, in words."""
    from metarec.data.fetch import fetch

    data_dir = root / data_cfg.raw_dir
    dvc_file = root / data_cfg.dvc_file
    clean_stale_staging(data_dir)  # what an interrupted fetch left (fetch itself does too)
    if data_dir.is_dir() and dvc_file.exists():
        md5 = dir_md5(data_dir)
        if md5 == read_dvc_file(dvc_file).md5:
            return f"{data_dir} matches {dvc_file} ({md5})"
    res = fetch(data_cfg, root=root)
    return f"fetched {data_cfg.dataset} into {res.data_dir} ({res.md5})"
