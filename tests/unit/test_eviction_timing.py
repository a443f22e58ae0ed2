"""When eviction runs (proxy.service.eviction): one at a time, asked-for
evictions coalesce, and the periodic check follows the injected clock."""

from __future__ import annotations

from pathlib import Path

from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.service.entries import Entries
from proxy.service.eviction import Eviction
from proxy.service.jobs import Jobs
from tests.unit.reactor import FakeReactor


def make(tmp_path: Path) -> tuple[FakeReactor, Eviction, list[int]]:
    layout = Layout(tmp_path)
    layout.create()
    reactor = FakeReactor()
    store = Store(layout, reactor)
    store.load()
    checks: list[int] = []

    def limit() -> int | None:  # called once by each eviction
        checks.append(1)
        return 10**12

    eviction = Eviction(reactor, reactor, store, Jobs(), Entries(store, reactor), limit)
    return reactor, eviction, checks


def test_evict_soon_coalesces_while_one_waits(tmp_path: Path) -> None:
    reactor, eviction, checks = make(tmp_path)
    eviction.evict_soon()  # runs now: its walk of the cache waits in a thread
    assert len(checks) == 1
    eviction.evict_soon()  # waits for the running one
    eviction.evict_soon()  # one already waits: nothing more
    eviction.evict_soon()
    assert len(checks) == 1
    reactor.run_threads()
    assert len(checks) == 2  # the running one, then the one that waited
    eviction.evict_soon()  # none waits now: it runs
    reactor.run_threads()
    assert len(checks) == 3


def test_periodic_check_runs_every_interval_of_the_clock(tmp_path: Path) -> None:
    reactor, eviction, checks = make(tmp_path)
    eviction.start(60.0)
    assert len(checks) == 1  # at once
    reactor.run_threads()
    reactor.advance(59.9)
    assert len(checks) == 1
    reactor.advance(0.1)
    assert len(checks) == 2
    reactor.run_threads()
    reactor.advance(60.0)
    assert len(checks) == 3
    reactor.run_threads()
    eviction.stop()
    reactor.advance(600.0)
    assert len(checks) == 3
