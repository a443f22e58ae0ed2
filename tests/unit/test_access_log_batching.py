"""The access log writes the lines of one reactor turn at once, on the
injected clock (proxy.logs._AccessLines), and counts the turn's answers in
the metrics at its end (or when /metrics is answered first)."""

from __future__ import annotations

import io
import logging

from twisted.internet.task import Clock

from proxy import logs, metrics
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


def _requests(route: str, method: str, status: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "storage_manager_http_requests_total",
        {"route": route, "method": method, "status": status},
    )
    return value or 0.0


def test_the_answers_of_one_turn_are_counted_once_the_turn_ends() -> None:
    clock = Clock()
    lines = _AccessLines(clock)
    before = _requests("v2_blob", "HEAD", "299")
    served = metrics.REGISTRY.get_sample_value(
        "storage_manager_served_bytes_total", {"route": "v2_blob"}
    )
    for _ in range(3):
        lines.count("v2_blob", "HEAD", 299, 10)
    assert _requests("v2_blob", "HEAD", "299") == before  # held until the turn ends
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert _requests("v2_blob", "HEAD", "299") == before + 3
    after = metrics.REGISTRY.get_sample_value(
        "storage_manager_served_bytes_total", {"route": "v2_blob"}
    )
    assert (after or 0.0) - (served or 0.0) == 30


def test_a_metrics_answer_counts_what_its_turn_holds() -> None:
    clock = Clock()
    saved = logs._access.clock
    logs._access.clock = clock
    try:
        before = _requests("v2_blob", "GET", "298")
        logs._access.count("v2_blob", "GET", 298, 0)
        body, _ = metrics.exposition()  # in the same turn, before its end
        assert _requests("v2_blob", "GET", "298") == before + 1
        assert b'status="298"' in body
        clock.advance(0)
        assert _requests("v2_blob", "GET", "298") == before + 1  # counted once
    finally:
        logs._access.clock = saved
