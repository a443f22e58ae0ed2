"""BlobSender with an injected clock: small bodies in one write, large ones
with sendfile(2) once the headers have left Twisted's buffer, and a client
that never takes the headers is cut after STALL_TIMEOUT seconds of the clock
(not after a count of polls)."""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request

from proxy.web.sendfile import SENDFILE_MIN, STALL_TIMEOUT, BlobSender
from tests.unit.support import Threads, Transport, answer, request

BIG = SENDFILE_MIN + 4096


class SocketTransport(Transport):
    """A transport with a real socket and Twisted's write-buffer fields."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.socket = sock
        self.dataBuffer = b"headers still here"
        self.offset = 0
        self._tempDataLen = 0

    def doWrite(self) -> None:
        pass


class Queued:
    """IReactorFromThreads: what workers hand back waits for the test to run it."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _file(tmp_path: Path, size: int) -> tuple[int, bytes]:
    data = os.urandom(size)
    (tmp_path / "blob").write_bytes(data)
    return os.open(tmp_path / "blob", os.O_RDONLY), data


def _request(transport: Transport) -> Request:
    r = request(b"GET", b"/blob")
    r.channel.transport = r.transport = transport
    return r


def test_a_small_body_is_one_write(tmp_path: Path) -> None:
    fd, data = _file(tmp_path, 1000)
    r = request(b"GET", b"/blob")
    BlobSender(Clock(), Threads(), ThreadPool()).send(r, fd, 10, 100)
    assert answer(r)[2] == data[10:110]
    assert r.finished


def test_headers_never_taken_cut_the_client_after_the_stall_timeout(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd, _ = _file(tmp_path, BIG)
    transport = SocketTransport(pair[0])
    r = _request(transport)
    clock = Clock()
    BlobSender(clock, Threads(), ThreadPool()).send(r, fd, 0, BIG)
    for _ in range(int(STALL_TIMEOUT) - 1):
        clock.advance(1)
    assert not transport.aborted
    clock.advance(2)
    assert transport.aborted
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_the_body_follows_the_headers_with_sendfile(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd, data = _file(tmp_path, BIG)
    transport = SocketTransport(pair[0])
    r = _request(transport)
    clock, threads = Clock(), Queued()
    pool = ThreadPool(minthreads=0, maxthreads=1)
    pool.start()
    received = bytearray()
    reader = threading.Thread(target=lambda: _read(pair[1], received, BIG))
    reader.start()
    try:
        BlobSender(clock, threads, pool).send(r, fd, 0, BIG)
        clock.advance(0.5)
        assert not received  # the headers have not left yet
        transport.dataBuffer = b""
        clock.advance(0.5)
        if not r.finished:  # the rest went from a worker thread
            f, args = threads.calls.get(timeout=30)
            f(*args)
        reader.join(30)
    finally:
        pool.stop()
    assert bytes(received) == data
    assert r.finished


def _read(sock: socket.socket, into: bytearray, n: int) -> None:
    while len(into) < n:
        chunk = sock.recv(65536)
        if not chunk:
            return
        into.extend(chunk)
