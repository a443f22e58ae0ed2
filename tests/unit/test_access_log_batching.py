"""The access log writes the lines of one reactor turn at once, on the
injected clock (proxy.logs._AccessLines)."""

from __future__ import annotations

import io
import logging

from twisted.internet.task import Clock

from proxy.logs import _AccessLines


class Stream(io.StringIO):
    """Counts its writes."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_lines_of_one_turn_are_written_once_the_turn_ends() -> None:
    clock = Clock()
    lines = _AccessLines(clock)
    stream = Stream()
    lines.handler = logging.StreamHandler(stream)
    lines.add('127.0.0.1 "HEAD /v2/ HTTP/1.1" 200 0 0.001s')
    lines.add('127.0.0.1 "GET /v2/ HTTP/1.1" 200 2 0.001s')
    assert stream.getvalue() == ""  # nothing before the turn ends
    assert len(clock.getDelayedCalls()) == 1  # one flush for both lines
    clock.advance(0)
    text = stream.getvalue().splitlines()
    assert [t.split(" INFO proxy.access: ")[1] for t in text] == [
        '127.0.0.1 "HEAD /v2/ HTTP/1.1" 200 0 0.001s',
        '127.0.0.1 "GET /v2/ HTTP/1.1" 200 2 0.001s',
    ]
    assert stream.writes == 1
    lines.add("next turn")
    assert len(clock.getDelayedCalls()) == 1  # a new turn schedules its own flush
    clock.advance(0)
    assert stream.getvalue().endswith("INFO proxy.access: next turn\n")


def test_without_a_clock_lines_are_not_batched() -> None:
    lines = _AccessLines()
    lines.handler = logging.StreamHandler(Stream())
    assert not lines.usable()  # log_access then goes through logging, line by line
