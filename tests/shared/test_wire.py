"""Streamed bodies, in-process with a reactor whose threads run when the test
says: an upload body reads one chunk at a time and no further while the
connection is paused; an answer's body pauses its connection while the sink
is behind. Memory stays at a chunk whatever the size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from proxy.shared.wire import CHUNK, FileBody, FileSink, _Receiver
from tests.unit.reactor import FakeReactor


class Consumer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class PausingConsumer(Consumer):
    """A connection that is behind after every write (its producer pauses)."""

    def __init__(self, producer: FileBody) -> None:
        super().__init__()
        self.producer = producer

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


def test_file_body_reads_a_chunk_at_a_time_and_stops_when_paused(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 256) * 3 + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    reactor = FakeReactor()
    body = FileBody(reactor, str(path), 5, len(data) - 5)
    consumer = PausingConsumer(body)
    done = body.startProducing(consumer)  # type: ignore[arg-type]
    assert reactor.run_threads() == 1  # one read, then the connection is "behind"
    assert len(consumer.chunks) == 1 and len(consumer.chunks[0]) == CHUNK
    assert reactor.run_threads() == 0  # paused: nothing more is read
    for _ in range(4):
        body.resumeProducing()
        reactor.run_threads()
    assert done.called and b"".join(consumer.chunks) == data[5:]
    assert len(consumer.chunks) == 3  # 3 * CHUNK - 1 bytes


def test_file_body_refuses_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"short")
    reactor = FakeReactor()
    done = FileBody(reactor, str(path), 0, 100).startProducing(Consumer())  # type: ignore[arg-type]
    reactor.run_threads()
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures and "shorter" in str(failures[0].value)


class Transport:
    paused = False
    stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class SlowSink:
    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []
        self.data: list[bytes] = []

    def write(self, data: bytes) -> Deferred[None]:
        self.data.append(data)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


def test_answer_body_pauses_while_the_sink_is_behind() -> None:
    reactor = FakeReactor()
    sink = SlowSink()
    receiver = _Receiver(reactor, 30.0, sink, limit=10)
    transport = Transport()
    receiver.makeConnection(transport)  # type: ignore[arg-type]
    receiver.dataReceived(b"abcd")
    assert transport.paused
    sink.pending.pop().callback(None)
    assert not transport.paused
    receiver.dataReceived(b"efghijk")  # past the limit of 10: stopped, an error
    assert transport.stopped
    receiver.connectionLost(Failure(ResponseDone()))
    errors: list[Any] = []
    receiver.done.addErrback(errors.append)
    assert errors and "longer" in str(errors[0].value)


def test_file_sink_buffers_about_a_chunk(tmp_path: Path) -> None:
    reactor = FakeReactor()
    out = tmp_path / "out"
    sink = FileSink(reactor, str(out), 3)
    assert sink.write(b"x" * 10) is None  # buffered
    d = sink.write(b"y" * CHUNK)  # a chunk: written (in a thread)
    assert d is not None and not d.called
    reactor.run_threads()
    assert d.called
    sink.write(b"z")
    sink.flush()
    reactor.run_threads()
    assert out.read_bytes() == b"\0" * 3 + b"x" * 10 + b"y" * CHUNK + b"z"


def test_file_sink_flush_waits_for_every_write_before_it(tmp_path: Path) -> None:
    """A chunk handed to a thread by write() and the rest by flush(): flush
    fires only once both are in the file (the caller hashes the file next; a
    flush that waited for its own write only let a read of the store hash a
    file whose first chunk was not written yet)."""
    reactor = FakeReactor()
    out = tmp_path / "out"
    sink = FileSink(reactor, str(out))
    first = sink.write(b"a" * CHUNK)  # its thread work waits in the manual pool
    assert first is not None and not first.called
    flushed = sink.flush()
    assert not flushed.called  # the first chunk is not written yet
    reactor.run_threads()
    assert flushed.called
    assert out.read_bytes() == b"a" * CHUNK
