"""The writer's readers (``--workers``, see :mod:`proxy.workers`): spawned
with the listening socket and a socket pair each, restarted when one dies,
stopped (TERM, then KILL) before the writer stops."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure

from proxy import metrics
from proxy.cache.store import Store
from proxy.workers.link import WriterEnd
from proxy.workers.reader import LINK_FD, LISTEN_FD

log = logging.getLogger("proxy")
READER_ENV = "NEKKO_READER"  # set for a reader: the listening socket's address family
RESTART_DELAY = 0.2  # seconds before a dead reader is replaced
CRASH_LOOP_DELAY = 2.0  # ... when it lived less than CRASH_LOOP_SECONDS
CRASH_LOOP_SECONDS = 2.0
STOP_WAIT = 5.0  # seconds a reader has to stop after TERM, then KILL


@attrs.define
class _Slot:
    """One reader's place: its current process and how often it was replaced."""

    index: int
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    process: Any = None
    ended: Deferred[None] | None = None


class _ReaderProcess(ProcessProtocol):
    def __init__(self, readers: Readers, slot: _Slot) -> None:
        self._readers = readers
        self._slot = slot

    def processEnded(self, reason: Failure) -> None:
        self._readers.ended(self._slot, reason)


class Readers:
    """``count`` reader processes serving ``port`` beside this writer."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        port: Any,
        site: Any,
        store: Store,
        argv: Sequence[str],
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._site = site
        self._store = store
        self._argv = list(argv)
        self._slots = [_Slot(i) for i in range(count)]
        self._stopping = False

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        readers = len(self._slots)
        log.info(
            "serving with %d processes: this writer (pid %d) and %d %s",
            readers + 1,
            os.getpid(),
            readers,
            "reader" if readers == 1 else "readers",
        )

    def pids(self) -> list[int]:
        return [s.pid for s in self._slots if s.pid is not None]

    def info(self) -> dict[str, Any]:
        """For ``/admin/info``: the writer and its readers."""
        return {
            "writer": os.getpid(),
            "readers": [
                {"pid": s.pid, "restarts": s.restarts} for s in self._slots if s.pid is not None
            ],
        }

    def _spawn(self, slot: _Slot) -> None:
        if self._stopping:
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        family = self._port.socket.family
        link = WriterEnd(self._reactor, self._site, self._store.merge_uses)
        self._reactor.adoptStreamConnection(
            mine.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: link)
        )
        mine.close()
        env = {**os.environ, READER_ENV: str(int(family))}
        try:
            process = self._reactor.spawnProcess(
                _ReaderProcess(self, slot),
                sys.executable,
                [sys.executable, "-m", "proxy", *self._argv],
                env=env,
                childFDs={1: 1, 2: 2, LISTEN_FD: self._port.fileno(), LINK_FD: theirs.fileno()},
            )
        finally:
            theirs.close()
        slot.process = process
        slot.pid = process.pid
        slot.started = time.monotonic()
        slot.ended = Deferred()

    def ended(self, slot: _Slot, reason: Failure) -> None:
        pid = slot.pid
        if pid is not None:
            metrics.process_ended(pid)
        slot.pid = slot.process = None
        ended, slot.ended = slot.ended, None
        if ended is not None:
            ended.callback(None)
        if self._stopping:
            return
        lived = time.monotonic() - slot.started
        log.warning("reader %s ended (%s): starting another", pid, reason.getErrorMessage())
        slot.restarts += 1
        delay = CRASH_LOOP_DELAY if lived < CRASH_LOOP_SECONDS else RESTART_DELAY
        self._reactor.callLater(delay, self._spawn, slot)

    def stop(self) -> Deferred[Any] | None:
        """TERM every reader; KILL those still running after STOP_WAIT."""
        self._stopping = True
        waits = []
        for slot in self._slots:
            if slot.process is None or slot.ended is None:
                continue
            waits.append(slot.ended)
            with contextlib.suppress(ProcessExitedAlready):  # processEnded follows
                slot.process.signalProcess("TERM")
        if not waits:
            return None

        def kill() -> None:
            for slot in self._slots:
                if slot.process is not None:
                    with contextlib.suppress(ProcessExitedAlready):
                        slot.process.signalProcess("KILL")

        call = self._reactor.callLater(STOP_WAIT, kill)
        done: Deferred[Any] = DeferredList(waits)
        done.addBoth(lambda r: call.cancel() if call.active() else None)
        return done
