"""`metarec serve` on the real stack: uvicorn in a subprocess on a free loopback port, ONNX
Runtime on a small export. Body-size limit (413), bounded queue (503 + Retry-After), the
/reload token, no temporary copies left by /reload, strict JSON types, two workers that both
serve and both reload, and the refusal to bind a public address without a token."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from metarec.cli import main
from metarec.export import export_onnx
from metarec.meta.learners import build_learner
from metarec.models.estimator import build_model
from metarec.serving.run import BindRefused, check_bind, is_loopback, worker_count
from tests.test_models import TINY, tiny_features
from tests.test_serve import ENCODERS, META, exported  # noqa: F401 - the export fixture

TOKEN = "serving-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = json.dumps({"ratings": {"1004": 5, "1010": 2}, "k": 3}).encode()
TIGHT = {"max_body_bytes": 4096, "max_active": 1, "max_queue": 0, "retry_after_s": 2,
         "body_timeout_s": 3.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m metarec.cli serve` in a subprocess, stopped on exit."""

    def __init__(self, tmp: Path, model: str, *, workers: int = 1,
                 serve: dict | None = None, env: dict | None = None,
                 params: dict | None = None) -> None:
        """``params``: other sections of the server's params.yaml."""
        path = tmp / "params.yaml"
        path.write_text(yaml.safe_dump({**(params or {}), "serve": serve or {}}))
        params = path
        self.port = free_port()
        cmd = [sys.executable, "-m", "metarec.cli", "--params", str(params), "serve",
               "--host", "127.0.0.1", "--port", str(self.port), "--model", model,
               "--workers", str(workers)]
        full_env = {**os.environ, "METAREC_SERVE_TOKEN": TOKEN, **(env or {})}
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, object]:
        """One request on a fresh connection: status, headers (lower-case), JSON body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body,
                         {"content-type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict, object]:
        return self.request("GET", path)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and the bytes of one response read from a raw socket (to its end or close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):  # noqa: F811 - the imported fixture
    srv = Server(tmp_path_factory.mktemp("srv"), str(exported[2]), serve=TIGHT)
    yield srv
    srv.stop()


def test_oversize_bodies_get_413_before_being_read(server) -> None:
    # a declared 20 MB body: refused on the headers alone, nothing of it is ever sent
    with server.raw() as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                  b"content-length: 20000000\r\n\r\n")
        status, raw = read_response(s)
    assert status == 413 and b"at most 4096 bytes" in raw and b"20000000 bytes" in raw
    # a chunked body has no declared length: refused once it streams past the limit
    with server.raw() as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(5):  # 5 x 1000 bytes > 4096; the final zero chunk is never sent
            s.sendall(b"3e8\r\n" + b" " * 1000 + b"\r\n")
        status, raw = read_response(s)
    assert status == 413 and b"more than 4096 bytes" in raw
    # a body under the limit, chunked or not, is served
    assert server.request("POST", "/recommend", BODY)[0] == 200
    with server.raw() as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n\r\n" + f"{len(BODY):x}\r\n".encode() + BODY
                  + b"\r\n0\r\n\r\n")
        assert read_response(s)[0] == 200
    assert server.get("/health")[2]["guard"]["too_large"] == 2


def test_a_full_queue_answers_503_with_retry_after(server) -> None:
    # max_active 1, max_queue 0: one request in the worker fills it. Hold one there: its
    # headers are in, and the server's "100 Continue" says the guard has admitted it and
    # is reading its body, which the client keeps back.
    with server.raw() as held:
        held.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json"
                     b"\r\nexpect: 100-continue\r\ncontent-length: " + str(len(BODY)).encode()
                     + b"\r\n\r\n")
        assert held.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        status, headers, body = server.request("POST", "/recommend", BODY)
        assert status == 503 and headers["retry-after"] == "2" and "busy" in body["detail"]
        health = server.get("/health")  # exempt from admission: still answers
        assert health[0] == 200 and health[2]["guard"]["pending"] == 1
        assert health[2]["guard"]["shed"] >= 1
        held.sendall(BODY)  # the held request completes normally
        status, raw = read_response(held)
        assert status == 200 and b'"items"' in raw
    assert server.request("POST", "/recommend", BODY)[0] == 200  # room again


def test_a_stalled_body_is_408_and_frees_its_place(server) -> None:
    with server.raw() as held:
        held.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json"
                     b"\r\nexpect: 100-continue\r\ncontent-length: 100\r\n\r\n")
        assert held.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # admitted
        held.sendall(b"{")  # and then nothing
        assert server.request("POST", "/recommend", BODY)[0] == 503  # it holds the place...
        start = time.monotonic()
        status, raw = read_response(held)
        assert status == 408 and b"body_timeout_s" in raw
        assert 2.0 < time.monotonic() - start < 10.0
    assert server.request("POST", "/recommend", BODY)[0] == 200  # ...until body_timeout_s


def test_reload_needs_the_bearer_token(server) -> None:
    status, headers, _ = server.request("POST", "/reload")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    assert server.request("POST", "/reload", headers=wrong)[0] == 401
    assert server.request("POST", "/reload", headers={"Authorization": TOKEN})[0] == 401
    status, _, body = server.request("POST", "/reload", headers=AUTH)
    assert status == 200 and body["status"] == "reloaded"
    assert [w["pid"] for w in body["workers"]] == [server.get("/health")[2]["pid"]]


@pytest.mark.parametrize("payload, loc", [
    ({"ratings": {"1004": True}}, ["body", "ratings", "1004"]),
    ({"ratings": {"1004": "5"}}, ["body", "ratings", "1004"]),
    ({"ratings": {"1004": 5}, "k": True}, ["body", "k"]),
    ({"ratings": {"1004": 5}, "k": 2.0}, ["body", "k"]),
    ({"ratings": {"1004": 5}, "exclude_seen": 0}, ["body", "exclude_seen"]),
])
def test_json_types_are_strict(server, payload, loc) -> None:
    status, _, body = server.request("POST", "/recommend", json.dumps(payload).encode())
    assert status == 422 and [e["loc"] for e in body["detail"]] == [loc]


def test_two_workers_serve_and_reload_on_both(exported, tmp_path: Path) -> None:  # noqa: F811
    model_dir = tmp_path / "model"
    shutil.copytree(exported[2], model_dir)
    srv = Server(tmp_path, str(model_dir), workers=2)
    try:
        status, _, body = srv.request("POST", "/reload", headers=AUTH)
        assert status == 200 and body["generation"] == 1
        pids = sorted(w["pid"] for w in body["workers"])
        assert len(pids) == 2 and all(w["generation"] == 1 for w in body["workers"])
        # a new model at the same place: both workers must serve it after one /reload
        torch.manual_seed(3)
        features = tiny_features()
        model = build_model(features, TINY).eval()
        second = tmp_path / "second"
        export_onnx(model, build_learner(model, META).adaptation(), features, second,
                    user_encoders=ENCODERS.to_dict()["user"], extra={"build": "second"})
        shutil.rmtree(model_dir)
        shutil.copytree(second, model_dir)
        status, _, body = srv.request("POST", "/reload", headers=AUTH)
        assert status == 200 and body["generation"] == 2, body
        assert sorted(w["pid"] for w in body["workers"]) == pids
        assert all(w["extra"] == {"build": "second"} and w["error"] is None
                   for w in body["workers"])
        # and on fresh connections both processes answer, with the new model
        seen: dict[int, dict] = {}
        for _ in range(200):
            health = srv.get("/health")[2]
            seen[health["pid"]] = health
            assert srv.request("POST", "/recommend", BODY)[0] == 200
            if len(seen) == 2:
                break
        assert sorted(seen) == pids
        assert all(h["generation"] == 2 and h["extra"] == {"build": "second"}
                   for h in seen.values())
    finally:
        srv.stop()


def test_reload_from_the_registry_leaves_no_temporary_copies(exported, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("mlflow")
    import json

    from mlflow import MlflowClient

    from metarec.registry.integrity import PATH_TAG, SHA_TAG, folder_manifest, new_version_path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)  # no global tracking URI: later tests must not inherit it
    exp = client.create_experiment("serving", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    folder = new_version_path()  # as registration writes a version: its own folder + digests
    client.log_artifacts(run.info.run_id, str(exported[2]), artifact_path=folder)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("metarec")
    mv = client.create_model_version(
        "metarec", f"{run.info.artifact_uri}/{folder}", run.info.run_id,
        tags={PATH_TAG: folder, SHA_TAG: json.dumps(folder_manifest(exported[2]))})
    client.set_registered_model_alias("metarec", "champion", mv.version)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    srv = Server(tmp_path, "models:/metarec@champion",
                 env={"MLFLOW_TRACKING_URI": uri, "TMPDIR": str(tmpdir)})
    try:
        def files() -> list[Path]:
            return sorted(p.relative_to(tmpdir) for p in tmpdir.rglob("*"))

        before = None
        for _ in range(4):  # the first reload writes the board's generation file
            status, _, body = srv.request("POST", "/reload", headers=AUTH)
            assert status == 200 and body["model"] == "models:/metarec@champion"
            before = before or files()
        assert srv.request("POST", "/recommend", BODY)[0] == 200
        after = files()
        assert after == before
        assert not [p for p in after if p.name.startswith("metarec-model-")]
    finally:
        srv.stop()
    # the server's reload board went with it (ONNX Runtime keeps a small `.ses` file there)
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("metarec")] == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_serve_refuses_a_public_bind_without_a_token(exported, tmp_path: Path, monkeypatch,  # noqa: F811
                                                     host: str) -> None:
    monkeypatch.delenv("METAREC_SERVE_TOKEN", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    res = CliRunner().invoke(main, ["--params", str(params), "serve", "--host", host,
                                    "--model", str(exported[2])])
    assert res.exit_code == 1 and "refusing to bind" in res.output and host in res.output
    with pytest.raises(BindRefused):
        check_bind(host, None)
    check_bind(host, TOKEN)  # a token makes it acceptable


def test_loopback_names_and_short_tokens(tmp_path: Path, monkeypatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.invalid")
    check_bind("127.0.0.1", None)
    assert worker_count(0) == len(os.sched_getaffinity(0)) and worker_count(3) == 3
    monkeypatch.setenv("METAREC_SERVE_TOKEN", "short")
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    res = CliRunner().invoke(main, ["--params", str(params), "serve", "--model", "x"])
    assert res.exit_code == 1 and "use at least 16" in res.output
