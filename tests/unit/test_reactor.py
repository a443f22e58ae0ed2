"""The server's reactor (proxy.web.reactor): Twisted's epoll reactor without
a log context per event, still handling every ready descriptor and logging,
not raising, what a handler raises."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.python import log
from twisted.python.failure import Failure

from proxy.web.reactor import EPollReactor

REPO = Path(__file__).resolve().parents[2]


class Reader(FileDescriptor):
    """A socket end that records its reads, or raises in doRead."""

    def __init__(self, reactor: Any, sock: socket.socket, fail: bool) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        if self.fail:
            raise RuntimeError("boom in doRead")
        self.read.append(self.sock.recv(100))

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


def test_every_ready_descriptor_is_handled_and_a_raise_is_logged() -> None:
    reactor = EPollReactor()  # type: ignore[no-untyped-call]
    pairs = [socket.socketpair() for _ in range(2)]
    failing = Reader(reactor, pairs[0][0], fail=True)
    working = Reader(reactor, pairs[1][0], fail=False)
    errors: list[dict[str, Any]] = []
    log.addObserver(errors.append)
    try:
        for r in (failing, working):
            reactor.addReader(r)
        for _, other in pairs:
            other.send(b"x")
        reactor.doPoll(1.0)
    finally:
        log.removeObserver(errors.append)
        for a, b in pairs:
            a.close()
            b.close()
    assert working.read == [b"x"]
    assert [e for e in errors if e.get("isError") and "boom in doRead" in str(e.get("failure"))]
    # As Twisted's own reactor does: the descriptor whose handler raised is let go.
    assert failing.lost and failing.lost[0].check(RuntimeError)
    assert not working.lost


def test_install_gives_the_server_this_reactor() -> None:
    code = (
        "from proxy.web import reactor as r; x = r.install(); "
        "import twisted.internet.reactor as t; "
        "print(type(x).__module__, type(x).__name__, x is t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.split()
    assert out == ["proxy.web.reactor", "EPollReactor", "True"]
