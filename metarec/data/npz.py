"""Byte-deterministic NPZ files: equal arrays give equal bytes.

``np.savez`` stamps each member with the current time, so two runs on the same data differ in
their bytes (and their DVC hashes). :func:`write_npz` writes the same format (``np.load`` reads
it) with a fixed member timestamp and members in sorted name order, atomically.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from metarec.io import atomic_file

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def write_npz(dest: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (name -> array; no object arrays) to ``dest`` as an uncompressed NPZ."""
    dest = Path(dest)
    with atomic_file(dest, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            arr = np.asarray(arrays[name])
            if arr.dtype == object:
                raise ValueError(f"{dest}: array '{name}' has dtype object; NPZ artifacts hold "
                                 "plain numeric/bytes arrays only (no pickles)")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return dest


def read_npz(src: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an NPZ file, loaded into memory (never unpickling)."""
    with np.load(Path(src), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
