"""``--workers`` under load and faults (issue 24 item 3): kill -9 of a reader
and of the writer at random points, no blob served before its commit, and
DELETE and eviction while readers stream -- against the real server."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import attrs
import httpx
import pytest

from proxy.cache.layout import Layout
from tests.cache.test_crash import check_cache
from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source
from tests.system.test_workers import _gone, _wait_until

pytestmark = pytest.mark.slow

WAIT = 30.0  # seconds a bounded wait may take before the test fails
LOAD_SECONDS = 8.0  # how long the client threads of a round run at most


def _digest(data: bytes | bytearray) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pid(c: httpx.Client) -> int:
    r = c.get("/healthz")
    assert r.status_code == 200
    return int(r.headers["x-worker-pid"])


def _reader_pids(srv: ServerProcess) -> list[int]:
    with srv.client() as c:
        info = c.get("/admin/info").json()
    return [int(r["pid"]) for r in info["workers"]["readers"]]


def _connection_to(srv: ServerProcess, pid: int) -> httpx.Client:
    """A keep-alive connection that process ``pid`` accepted."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        c = srv.client()
        try:
            if _pid(c) == pid:
                return c
        except httpx.TransportError:
            pass
        c.close()
    raise AssertionError(f"no connection was accepted by {pid}")


@attrs.define
class Load:
    """Client threads pulling blobs (each body's sha256 checked) and POSTing
    small files, against ``srv``, each on a new connection (so every process
    gets some), until :meth:`stop` or LOAD_SECONDS."""

    srv: ServerProcess
    source: Source
    blobs: dict[str, int]  # digest -> size of what the pullers pull
    prefix: str
    answered: dict[str, str] = attrs.field(factory=dict)  # url -> digest, POSTs answered
    pulled: int = 0
    connection_errors: int = 0
    wrong: list[str] = attrs.field(factory=list)  # anything but a good answer or a cut
    quiet: threading.Event = attrs.field(factory=threading.Event)  # set: no POSTs
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _threads: list[threading.Thread] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def start(self, pullers: int = 2, posters: int = 2) -> Load:
        for i in range(pullers):
            self._threads.append(threading.Thread(target=self._pull, args=(i,), daemon=True))
        for i in range(posters):
            self._threads.append(threading.Thread(target=self._post, args=(i,), daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT)
            assert not t.is_alive(), "a client thread did not stop"

    def _running(self, until: float) -> bool:
        return not self._stop.is_set() and time.monotonic() < until

    def _pull(self, seed: int) -> None:
        rng = random.Random(seed)
        digests = sorted(self.blobs)
        until = time.monotonic() + LOAD_SECONDS
        while self._running(until):
            digest = rng.choice(digests)
            body = bytearray()
            try:
                with self.srv.client() as c, c.stream("GET", f"/v2/x/blobs/{digest}") as r:
                    status = r.status_code
                    for chunk in r.iter_bytes(256 * 1024):
                        body += chunk
                        time.sleep(0.002)  # a slowish client: kills land mid-body
            except httpx.TransportError:
                with self._lock:
                    self.connection_errors += 1
                continue
            with self._lock:
                if status != 200:
                    self.wrong.append(f"GET {digest}: {status} {bytes(body[:200])!r}")
                elif len(body) != self.blobs[digest] or _digest(body) != digest:
                    self.wrong.append(f"GET {digest}: 200 with {len(body)} other bytes")
                else:
                    self.pulled += 1

    def _post(self, seed: int) -> None:
        n = 0
        until = time.monotonic() + LOAD_SECONDS
        while self._running(until):
            if self.quiet.is_set():
                time.sleep(0.01)
                continue
            n += 1
            path = f"/{self.prefix}-{seed}-{n}.bin"
            data = f"{path} ".encode() * 300
            self.source.add_file(path, data)
            url = self.source.url(path)
            try:
                with self.srv.client() as c:
                    r = c.post("/content/", json={"url": url})
            except httpx.TransportError:
                with self._lock:
                    self.connection_errors += 1
                continue
            with self._lock:
                if r.status_code not in (200, 201) or r.json()["digest"] != _digest(data):
                    self.wrong.append(f"POST {path}: {r.status_code} {r.text[:200]}")
                else:
                    self.answered[url] = r.json()["digest"]


def _ingest(srv: ServerProcess, source: Source, files: dict[str, bytes]) -> dict[str, int]:
    """POST each file; the digest -> size of each."""
    out = {}
    with srv.client() as c:
        for path, data in files.items():
            source.add_file(path, data)
            r = c.post("/content/", json={"url": source.url(path)})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == _digest(data)
            out[_digest(data)] = len(data)
    return out


def _all_served(srv: ServerProcess, answered: dict[str, str]) -> None:
    """Every answered POST's entry: listed by the writer, its blob served with
    the right bytes by every process (a connection pinned to each)."""
    assert srv.proc is not None
    with srv.client() as c:
        for url, digest in answered.items():
            r = c.get(f"/content/{b64(url)}")
            assert r.status_code == 200, (url, r.status_code, r.text)
            assert r.json()["digest"] == digest
    for pid in [*_reader_pids(srv), srv.proc.pid]:

        def every_blob(pid: int = pid) -> bool:
            with closing(_connection_to(srv, pid)) as c:
                for url, digest in answered.items():
                    got = c.get(f"/v2/x/blobs/{digest}")
                    assert got.status_code == 200, (pid, url, got.status_code)
                    assert _digest(got.content) == digest, (pid, url)
                # Answered there, not handed to the writer (a reader behind
                # the index hands its requests over until it has caught up).
                return _pid(c) == pid

        _wait_until(every_blob, f"process {pid} serves every answered entry itself")


@pytest.fixture
def pulled_files() -> dict[str, bytes]:
    """Blobs of each way a blob is sent: one pread and write, sendfile from
    the fast path, sendfile from a thread of the ordinary path."""
    rng = random.Random(24)
    sizes = (100 * 1024, 700 * 1024 + 1, 6 * 1024 * 1024 + 3)
    return {f"/pull{i}.bin": rng.randbytes(size) for i, size in enumerate(sizes)}


# -- (a) kill -9 of a reader --------------------------------------------------------


def test_kill_9_of_readers_under_load(
    cache_dir: Path, source: Source, pulled_files: dict[str, bytes]
) -> None:
    rng = random.Random(3)
    with ServerProcess(cache_dir, "--workers", "3", "--verbose", "1", "--retries", "0") as srv:
        blobs = _ingest(srv, source, pulled_files)
        # Far more than the socket buffers hold: a kill cuts its stream.
        sizes = _ingest(srv, source, {"/big.bin": random.Random(4).randbytes(48 * 1024 * 1024)})
        (big,) = sizes
        load = Load(srv, source, blobs, "a").start()
        kills = cut = 0
        try:
            for _ in range(5):
                time.sleep(rng.uniform(0.05, 0.8))  # a random point of the load
                readers = _reader_pids(srv)
                victim = rng.choice(readers)
                # At least one request in flight on it: a stream begun, not taken.
                load.quiet.set()  # no change meanwhile: the victim stays current
                stream = _stream_from(srv, victim, big)
                first = next(stream)
                load.quiet.clear()
                os.kill(victim, signal.SIGKILL)
                kills += 1
                try:
                    _finish(first, stream, big, sizes[big])  # all of it was sent already
                except httpx.TransportError:
                    cut += 1  # cut short: an error, never a short body taken as whole

                def replaced(victim: int = victim) -> bool:
                    pids = _reader_pids(srv)
                    return len(pids) == 2 and victim not in pids

                _wait_until(replaced, f"reader {victim} replaced")
        finally:
            load.stop()
        print(f"pulled {load.pulled}, posted {len(load.answered)}, cut {load.connection_errors}")
        assert not load.wrong, load.wrong
        print(f"{cut} of {kills} streams on a killed reader cut")
        assert cut, "no stream was cut by a kill"
        assert load.pulled > 0 and load.answered, (load.pulled, load.answered)
        with srv.client() as c:
            info = c.get("/admin/info").json()["workers"]
        assert sum(r["restarts"] for r in info["readers"]) == kills
        assert srv.proc is not None and srv.proc.poll() is None
        _all_served(srv, load.answered)


# -- (b) kill -9 of the writer ------------------------------------------------------


def test_kill_9_of_the_writer_under_load_then_restart(
    cache_dir: Path, source: Source, pulled_files: dict[str, bytes]
) -> None:
    rng = random.Random(5)
    answered: dict[str, str] = {}
    blobs: dict[str, int] = {}
    for round_ in range(3):
        srv = ServerProcess(cache_dir, "--workers", "3", "--verbose", "1", "--retries", "0")
        srv.start()
        if not blobs:
            blobs = _ingest(srv, source, pulled_files)
        readers = _reader_pids(srv)
        assert len(readers) == 2
        load = Load(srv, source, blobs, f"b{round_}").start()
        try:
            time.sleep(rng.uniform(0.3, 2.0))  # a random point of the load
            srv.kill()
            # The readers notice by themselves (their link to the writer closes).
            _wait_until(lambda r=readers: all(_gone(p) for p in r), "the readers stop")
        finally:
            load.stop()
        print(f"pulled {load.pulled}, posted {len(load.answered)}, cut {load.connection_errors}")
        assert not load.wrong, load.wrong
        answered.update(load.answered)
        # Nothing holds the cache any more: its lock is free.
        assert Layout(cache_dir).lock_holder() is None
        check_cache(cache_dir)  # every blob hashes to its name; index.json whole

    assert answered
    with ServerProcess(cache_dir, "--workers", "3", "--verbose", "1") as srv:
        # The crash guarantee: every POST that was answered is there.
        _all_served(srv, answered)
        # One lock holder per cache: a second server on it refuses while this one runs.
        second = ServerProcess(cache_dir, "--workers", "3")
        with pytest.raises(RuntimeError, match="in use by another storage-manager"):
            second.start()
        assert second.proc is not None and second.proc.returncode not in (None, 0)
        assert srv.proc is not None
        holder = Layout(cache_dir).lock_holder()
        assert holder is not None and holder.pid == srv.proc.pid


# -- (c) no blob before its commit ----------------------------------------------------


def test_a_reader_never_serves_a_blob_before_its_commit(cache_dir: Path, source: Source) -> None:
    data = random.Random(7).randbytes(12 * 1024 * 1024 + 5)
    digest = _digest(data)
    source.add_file("/slow.bin", data)
    source.set_delay("/slow.bin", 0.05, chunk=256 * 1024)  # about 2.5 s
    url = source.url("/slow.bin")
    with ServerProcess(cache_dir, "--workers", "3", "--verbose", "1", "--retries", "0") as srv:
        readers = _reader_pids(srv)
        posted: list[httpx.Response] = []

        def post() -> None:
            with srv.client() as c:
                posted.append(c.post("/content/", json={"url": url}))

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        answers: dict[str, int] = {}
        i = 0
        deadline = time.monotonic() + WAIT
        while poster.is_alive():
            assert time.monotonic() < deadline, "the slow POST did not end"
            reader = readers[i % len(readers)]
            i += 1
            with closing(_connection_to(srv, reader)) as c:
                head = c.head(f"/v2/x/blobs/{digest}")
                got = c.get(f"/v2/x/blobs/{digest}")
                part = c.get(f"/v2/x/blobs/{digest}", headers={"Range": "bytes=1000-2999"})
            for what, r in (("HEAD", head), ("GET", got), ("range", part)):
                answers[f"{what} {r.status_code}"] = answers.get(f"{what} {r.status_code}", 0) + 1
                assert r.status_code in (200, 206, 404), (what, r.status_code, r.text[:200])
                if r.status_code == 404:
                    continue
                if what == "HEAD":
                    assert r.headers["content-length"] == str(len(data)), r.headers
                elif what == "GET":
                    assert r.status_code == 200
                    assert len(r.content) == len(data) and _digest(r.content) == digest
                else:
                    assert r.status_code == 206 and r.content == data[1000:3000]
        poster.join()
        assert posted and posted[0].status_code == 201, posted
        assert any(k.endswith(" 404") for k in answers), answers  # asked before the commit
        _all_served(srv, {url: digest})


# -- (d) DELETE and eviction while readers stream -------------------------------------


def _current_connection_to(srv: ServerProcess, pid: int) -> httpx.Client:
    """A connection that process ``pid`` accepted and, if a reader, kept
    after a request it answers only when its index is current."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        c = _connection_to(srv, pid)
        assert c.get("/v2/").status_code == 200
        if _pid(c) == pid:
            return c
        c.close()
    raise AssertionError(f"{pid} never had the current index")


def _stream_from(srv: ServerProcess, pid: int, digest: str) -> Iterator[bytes]:
    """The body of a GET of ``digest`` from process ``pid``, chunk by chunk."""
    c = _current_connection_to(srv, pid)
    with closing(c), c.stream("GET", f"/v2/x/blobs/{digest}") as r:
        assert r.status_code == 200
        yield from r.iter_bytes(256 * 1024)


def _finish(first: bytes, rest: Iterator[bytes], digest: str, size: int) -> None:
    h = hashlib.sha256(first)
    n = len(first)
    for chunk in rest:
        h.update(chunk)
        n += len(chunk)
    assert n == size
    assert "sha256:" + h.hexdigest() == digest


def test_delete_while_a_reader_streams(cache_dir: Path, source: Source) -> None:
    data = random.Random(11).randbytes(64 * 1024 * 1024)
    digest = _digest(data)
    with ServerProcess(cache_dir, "--workers", "2", "--verbose", "1") as srv:
        _ingest(srv, source, {"/big.bin": data})
        url = source.url("/big.bin")
        (reader,) = _reader_pids(srv)
        _all_served(srv, {url: digest})  # the reader has the entry
        stream = _stream_from(srv, reader, digest)
        first = next(stream)
        with srv.client() as c:
            assert c.delete(f"/content/{b64(url)}").status_code == 204
        # Gone once answered, though a reader streams it.
        _gone_while_streamed(srv, reader, url, digest, (first, stream), len(data))


def _gone_while_streamed(
    srv: ServerProcess,
    reader: int,
    url: str,
    digest: str,
    streaming: tuple[bytes, Iterator[bytes]],
    size: int,
) -> None:
    """The entry of ``url`` is gone from the cache while ``reader`` streams
    its blob (``streaming``: the first chunk and the rest): the blob file is
    removed, the reader answers 404 for new requests, the stream still ends
    whole, and afterwards the writer and the reader both say 404."""
    assert not (srv.cache_dir / "blobs" / "sha256" / digest.split(":", 1)[1]).exists()
    with closing(_connection_to(srv, reader)) as c:
        assert c.get(f"/v2/x/blobs/{digest}").status_code == 404
    _finish(streaming[0], streaming[1], digest, size)
    with srv.client() as c:
        assert c.get(f"/content/{b64(url)}").status_code == 404
    with closing(_connection_to(srv, reader)) as c:
        assert c.get(f"/v2/x/blobs/{digest}").status_code == 404


def test_eviction_while_a_reader_streams(cache_dir: Path, source: Source) -> None:
    rng = random.Random(13)
    old = rng.randbytes(40 * 1024 * 1024)
    new = rng.randbytes(40 * 1024 * 1024)
    digest = _digest(old)
    with ServerProcess(
        cache_dir, "--workers", "2", "--verbose", "1", "--max-cache-size", "60M"
    ) as srv:
        _ingest(srv, source, {"/old.bin": old})
        url = source.url("/old.bin")
        (reader,) = _reader_pids(srv)
        _all_served(srv, {url: digest})
        stream = _stream_from(srv, reader, digest)
        first = next(stream)
        _ingest(srv, source, {"/new.bin": new})  # 80M > 60M: the old entry goes
        # Evicted before the answer, though a reader streams it (the writer
        # does not know: a reader's uses reach it as last-use times only).
        _gone_while_streamed(srv, reader, url, digest, (first, stream), len(old))
        _all_served(srv, {source.url("/new.bin"): _digest(new)})
