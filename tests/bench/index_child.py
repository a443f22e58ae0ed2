"""The measuring process of :mod:`tests.bench.index_cost`: ``python -m tests.bench.index_child
<cache> <changes>`` opens a cache made by :func:`tests.bench.index_cost.make_cache` the way the
server does (a :class:`proxy.cache.store.Store` on the reactor), makes ``<changes>`` changes
through the store's API, and prints one line of JSON: seconds to load, RSS before and after
the load, and the seconds each change took until its ``put`` fired (one at a time, then 8 at
once, as 8 clients would), then until the views were in line too; and the seconds to start
(the load and the views' full sync, as the server does before ``/readyz``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.service.entries import Entries
from tests.bench.index_cost import fabricate_entry


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure(cache: Path, changes: int) -> dict[str, Any]:
    layout = Layout(cache).with_deferred_sync()
    before = rss_bytes()
    started, cpu = time.perf_counter(), time.process_time()
    store = Store(layout, reactor, reactor)
    store.load()
    store.open_journal()
    loaded, loaded_cpu = time.perf_counter() - started, time.process_time() - cpu
    entries_ = Entries(store, reactor)
    entries_.sync_all()  # what the server's start does before /readyz
    start = time.perf_counter() - started
    after = rss_bytes()
    entries = len(store.entries())
    serial: list[float] = []
    for i in range(changes):
        entry = fabricate_entry(layout, f"serial-{os.getpid()}-{i}", write=True)
        t = time.perf_counter()
        await store.put(entry)
        serial.append(time.perf_counter() - t)
    concurrent: list[float] = []
    for r in range(max(1, changes // 8)):
        batch = [
            fabricate_entry(layout, f"group-{os.getpid()}-{r}-{j}", write=True) for j in range(8)
        ]
        t = time.perf_counter()
        await defer.gatherResults([store.put(e) for e in batch])
        concurrent.append((time.perf_counter() - t) / 8)
    removed: list[float] = []
    for i in range(min(changes, 20)):
        t = time.perf_counter()
        await store.remove(f"https://bench.invalid/serial-{os.getpid()}-{i}")
        removed.append(time.perf_counter() - t)
    viewed: list[float] = []
    for i in range(changes):
        entry = fabricate_entry(layout, f"viewed-{os.getpid()}-{i}", write=True)
        t = time.perf_counter()
        await store.put(entry)
        await entries_.sync_views()
        viewed.append(time.perf_counter() - t)
    unviewed: list[float] = []
    for i in range(min(changes, 20)):
        t = time.perf_counter()
        await store.remove(f"https://bench.invalid/viewed-{os.getpid()}-{i}")
        await entries_.sync_views()
        unviewed.append(time.perf_counter() - t)
    t = time.perf_counter()
    await store.close()
    closed = time.perf_counter() - t
    return {
        "entries": entries,
        "load_s": loaded,
        "load_cpu_s": loaded_cpu,  # the work apart from waiting (a shared machine)
        "rss_before": before,
        "rss_after_load": after,
        "put_s_median": statistics.median(serial),
        "put_s_max": max(serial),
        "put8_s_per_change_median": statistics.median(concurrent),
        "remove_s_median": statistics.median(removed),
        "put_views_s_median": statistics.median(viewed),
        "remove_views_s_median": statistics.median(unviewed),
        "start_s": start,
        "close_s": closed,
    }


def main() -> None:
    cache, changes = Path(sys.argv[1]), int(sys.argv[2])
    out: dict[str, Any] = {}

    async def go() -> None:
        out.update(await measure(cache, changes))
        print(json.dumps(out), flush=True)

    task.react(lambda _r: defer.ensureDeferred(go()))  # exits the process


if __name__ == "__main__":
    main()
