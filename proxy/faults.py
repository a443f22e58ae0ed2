"""Named pause points for crash tests (test-only fault injection).

``NEKKO_FAULT_PAUSE=<point>[,<point>...]`` makes the process stop for good
the first time it reaches one of the named points, after logging
``fault point <point> reached`` so a test can ``kill -9`` it exactly there.
Unset (always, outside tests) a point costs one set lookup.

Points (each in a worker thread, never on the reactor):

``ingest-write``
    after a batch of download data was written to ``ingest/<key>/data``,
    before the next one.
``blob-verified``
    a verified blob is about to be renamed into ``blobs/`` (its data fsync'd,
    or its ``ingest/unsynced/`` marker written).
``index-writing``
    half of the temporary ``index.json`` is written.
``index-fsynced``
    the temporary ``index.json`` is complete and fsync'd, just before its
    rename over ``index.json``.
``journal-written``
    entry changes were written to ``index.journal``, before their fdatasync
    (:mod:`proxy.cache.journal`).
``journal-rotating``
    a compaction wrote and fsync'd the journal's next generation, just before
    its rename over ``index.journal`` (``index.json`` is already replaced).
``shared-upload``
    an entry's write-back to the shared store was queued
    (``shared-uploads/<hex>.json`` written), before any of it is uploaded.
"""

from __future__ import annotations

import logging
import os
import threading

POINTS = frozenset(
    {
        "ingest-write",
        "blob-verified",
        "index-writing",
        "index-fsynced",
        "journal-written",
        "journal-rotating",
        "shared-upload",
    }
)

log = logging.getLogger(__name__)


def _armed() -> frozenset[str]:
    names = {p.strip() for p in os.environ.get("NEKKO_FAULT_PAUSE", "").split(",") if p.strip()}
    unknown = names - POINTS
    if unknown:
        raise SystemExit(f"NEKKO_FAULT_PAUSE: unknown point(s) {', '.join(sorted(unknown))}")
    return frozenset(names)


ARMED = _armed()


def point(name: str) -> None:
    """Pause here forever if ``name`` is armed (the test then kills the process)."""
    if name in ARMED:
        log.warning("fault point %s reached; pausing", name)
        threading.Event().wait()
