"""Request bodies are admitted or refused from the request head, before a
byte of them is read or stored; request heads have an absolute deadline.
Raw sockets against the real server: a refusal must come while the client
has sent the head alone."""

from __future__ import annotations

import os
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.fetch.ociref import Platform
from tests.support.images import Blobs, build_layout, digest_of, random_bytes
from tests.support.server import ServerProcess

TOKEN = "bodies-secret-token"
NODE = Platform.running()
GIB = 1024**3
ANSWER_WAIT = 20.0  # bound on waiting for an answer (a server reading the body never answers)


def address(srv: ServerProcess) -> tuple[str, int]:
    host, _, port = srv.base_url.removeprefix("http://").rpartition(":")
    return host, int(port)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the answer, read until
    the server closes; fails if none comes within ANSWER_WAIT."""
    sock.settimeout(ANSWER_WAIT)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"no answer (and no close) within {ANSWER_WAIT} s; got {data[:200]!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def head_only(srv: ServerProcess, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send a request head announcing a body, never the body; the answer."""
    with socket.create_connection(address(srv)) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
        return read_answer(sock)


def deleted_files(pid: int) -> list[str]:
    """What the server's open descriptors that name deleted files point to."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and not target.startswith("/memfd:") and " (deleted)" in target:
            found.append(target)
    return found


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cache = tmp_path_factory.mktemp("protected") / "cache"
    env = {"NEKKO_API_TOKEN": TOKEN}
    with ServerProcess(cache, "--protect-reads", "--allow-push", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def open_push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("push") / "cache", "--allow-push") as srv:
        yield srv


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("ro") / "cache") as srv:
        yield srv


def test_a_huge_body_to_healthz_is_refused_before_it_is_read(protected: ServerProcess) -> None:
    assert protected.proc is not None
    with socket.create_connection(address(protected)) as sock:
        sock.sendall(
            f"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * GIB}\r\n\r\n".encode()
        )
        status, headers, body = read_answer(sock)
    assert status == 413, body
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    # Nothing of it is kept anywhere, in /tmp or elsewhere.
    assert deleted_files(protected.proc.pid) == []
    # The same with the body already on its way: it is read and dropped, never stored.
    with socket.create_connection(address(protected)) as sock:
        sock.sendall(f"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n".encode())
        sent = 0
        chunk = b"\0" * 65536
        try:
            while sent < 4 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed: fine
        assert deleted_files(protected.proc.pid) == []
        status, headers, _ = read_answer(sock)
    assert status == 413


def test_bodies_on_routes_that_need_the_token_are_refused_401_at_once(
    protected: ServerProcess,
) -> None:
    for method, path in (
        ("GET", "/metrics"),
        ("POST", "/content"),
        ("POST", "/admin/import"),
        ("GET", "/v2/"),
    ):
        status, headers, body = head_only(
            protected, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}"
        )
        assert status == 401, (path, body)
        assert headers["www-authenticate"] == 'Basic realm="storage-manager"'
        assert headers["connection"] == "close"
    # A curl-style client waiting for "100 Continue" gets the refusal instead.
    status, _, _ = head_only(
        protected,
        f"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {GIB}",
    )
    assert status == 413


def test_push_upload_without_the_token_is_refused_before_its_body(
    protected: ServerProcess,
) -> None:
    uuid = "0" * 32
    status, headers, body = head_only(
        protected,
        f"PATCH /v2/team/app/blobs/uploads/{uuid} HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}",
    )
    assert status == 401, body
    assert b'"UNAUTHORIZED"' in body and b'"errors"' in body  # an OCI error
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    status, _, body = head_only(
        protected,
        f"POST /v2/team/app/blobs/uploads/?digest=sha256:{'0' * 64} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer wrong\r\nContent-Length: {GIB}",
    )
    assert status == 401, body


def test_push_to_a_read_only_registry_is_refused_before_its_body(
    read_only: ServerProcess,
) -> None:
    status, headers, body = head_only(
        read_only,
        f"PATCH /v2/team/app/blobs/uploads/{'0' * 32} HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}",
    )
    assert status == 405, body
    assert b'"UNSUPPORTED"' in body
    assert headers["allow"] == "GET, HEAD"


def test_oversized_json_manifest_and_unknown_bodies_are_refused_at_once(
    open_push: ServerProcess,
) -> None:
    # /content takes 64 KiB of JSON (over it: 413, as every body over its limit).
    status, _, body = head_only(
        open_push, "POST /content/ HTTP/1.1\r\nHost: x\r\nContent-Length: 65537"
    )
    assert status == 413 and b"larger than this request takes (65536 bytes)" in body
    # A manifest has at most 4 MiB, as in distribution.
    status, _, body = head_only(
        open_push,
        "PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        f"Content-Length: {4 * 1024 * 1024 + 1}",
    )
    assert status == 413 and b'"SIZE_INVALID"' in body
    # Unknown paths and bodiless routes take no real body.
    status, _, _ = head_only(
        open_push, f"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}"
    )
    assert status == 404
    status, _, _ = head_only(
        open_push, f"DELETE /content/aGVsbG8 HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}"
    )
    assert status == 413


@pytest.mark.parametrize("path", ["/content/", "/healthz", "/v2/team/app/manifests/v1"])
def test_a_chunked_body_is_cut_off_at_its_limit(open_push: ServerProcess, path: str) -> None:
    method = "PUT" if "/manifests/" in path else "POST"
    chunk = b"x" * 65536
    with socket.create_connection(address(open_push)) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        try:
            # Past every limit (4 MiB at most), never the last chunk: an
            # answer can only come from a server that cut the body off.
            while sent < 8 * 1024 * 1024:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        break
                except BlockingIOError:
                    pass
        except OSError:
            pass  # cut off
        status, headers, body = read_answer(sock)
    assert status == 413, body
    assert headers["connection"] == "close"
    assert open_push.proc is not None
    assert deleted_files(open_push.proc.pid) == []


def test_normal_pushes_still_work_and_spool_into_ingest(open_push: ServerProcess) -> None:
    assert open_push.proc is not None
    data = random_bytes(3 * 1024 * 1024, 5)
    digest = digest_of(data)
    with open_push.client() as c:
        # Monolithic, with a length.
        r = c.post("/v2/bodies/a/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        # Chunked PATCH (no length), then PUT.
        other = random_bytes(1024 * 1024, 6)
        r = c.post("/v2/bodies/b/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = c.patch(r.headers["location"], content=iter([other[:500_000], other[500_000:]]))
        assert r.status_code == 202, r.text
        r = c.put(r.headers["location"], params={"digest": digest_of(other)})
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/bodies/b/blobs/{digest_of(other)}").content == other
    # While a large upload's body arrives, it is spooled inside the cache's ingest/.
    ingest = str((open_push.cache_dir / "ingest").resolve())
    with socket.create_connection(address(open_push)) as sock:
        sock.sendall(
            f"POST /v2/bodies/c/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[: len(data) // 2])
        spooled: list[str] = []
        for _ in range(100):  # bounded: until the server has opened its spool file
            spooled = deleted_files(open_push.proc.pid)
            if spooled:
                break
            time.sleep(0.05)
        assert spooled and all(p.startswith(ingest + "/") for p in spooled), spooled
        sock.sendall(data[len(data) // 2 :])
        sock.settimeout(ANSWER_WAIT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 201 ")


def test_import_with_the_token_still_works(protected: ServerProcess, tmp_path: Path) -> None:
    blobs = Blobs()
    image = blobs.image(NODE.architecture, layers=[random_bytes(300_000, 8)])
    layout = build_layout(tmp_path / "layout", blobs, {"v1": image})
    bundle = tmp_path / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    with protected.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.post("/admin/import", content=bundle.read_bytes())
        assert r.status_code == 200, r.text
        assert r.json()["entries"] == ["oci-layout:v1"]
    with protected.client() as c:  # and without the token: refused
        assert c.post("/admin/import", content=bundle.read_bytes()).status_code == 401


def test_a_dribbled_request_head_is_cut_off_at_its_deadline(tmp_path: Path) -> None:
    env = {"NEKKO_HEAD_TIMEOUT": "2"}
    with ServerProcess(tmp_path / "cache", env=env) as srv:
        with socket.create_connection(address(srv)) as sock:
            sock.settimeout(0.5)
            head = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 20
            closed = False
            answer = b""
            for byte in head:  # 0.5 s a byte (25 s in all): an idle timeout never fires
                try:
                    sock.sendall(bytes([byte]))
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                answer += data
            assert closed, "the server kept a dribbled request head past its deadline"
        assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
        # A prompt request still goes through.
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200
