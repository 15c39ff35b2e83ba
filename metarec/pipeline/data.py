"""The data stage that precedes preparation: make ``data/`` hold the version DVC records."""

from __future__ import annotations

import logging
from pathlib import Path

from metarec.config import DataConfig
from metarec.dvc import checkout_version, dir_md5, read_dvc_file
from metarec.io import clean_stale_staging

log = logging.getLogger(__name__)


def ensure_data(data_cfg: DataConfig, root: Path) -> str:
    """Make ``data.raw_dir`` hold the version ``data.dvc_file`` records: as it is, after
    completing an interrupted ingest (metarec.feedback.ingest), checked out of the DVC cache
    (a version with ingested feedback cannot be fetched), else fetched. Returns what was done,
    in words."""
    from metarec.data.fetch import fetch
    from metarec.feedback.ingest import recover

    data_dir = root / data_cfg.raw_dir
    dvc_file = root / data_cfg.dvc_file
    recovered = recover(data_cfg, root)  # an interrupted ingest first: its journal decides
    clean_stale_staging(data_dir)  # what an interrupted fetch left (fetch itself does too)
    if data_dir.is_dir() and dvc_file.exists():
        md5 = dir_md5(data_dir)
        if md5 == read_dvc_file(dvc_file).md5:
            return f"{data_dir} matches {dvc_file} ({md5})" + (f"; {recovered}" if recovered
                                                                 else "")
    if dvc_file.exists() and (root / ".dvc").is_dir():
        try:
            out = checkout_version(dvc_file, root)
            if dir_md5(data_dir) == out.md5:
                return f"checked out {out.md5} from the DVC cache into {data_dir}"
        except RuntimeError as exc:
            log.info("not in the DVC cache (%s); fetching", str(exc).splitlines()[0])
    res = fetch(data_cfg, root=root)
    return f"fetched {data_cfg.dataset} into {res.data_dir} ({res.md5})"
