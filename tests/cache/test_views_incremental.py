"""The views follow the entries change by change (issue 24, item 4): a change
touches the model directories of its entries alone, a directory two entries
name stays until neither does, and the start's full sync settles the rest;
and a blob two entries hold keeps both as its users when one goes."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs

from proxy.cache.layout import Layout
from proxy.cache.modelviews import models_dir
from proxy.cache.store import Entry, Store
from proxy.service.entries import Entries
from tests.bench.index_cost import fabricate_entry
from tests.unit.reactor import FakeReactor


def _open(tmp_path: Path) -> tuple[FakeReactor, Store, Entries]:
    layout = Layout(tmp_path / "cache")
    layout.create()
    reactor = FakeReactor()
    store = Store(layout, reactor, reactor)
    store.load()
    entries = Entries(store, reactor)
    entries.sync_all()
    return reactor, store, entries


def _put(reactor: FakeReactor, store: Store, entries: Entries, entry: Entry) -> None:
    store.put(entry)
    reactor.run_threads()
    entries.sync_views()
    reactor.run_threads()


def _remove(reactor: FakeReactor, store: Store, entries: Entries, url: str) -> None:
    store.remove(url)
    reactor.run_threads()
    entries.sync_views()
    reactor.run_threads()


def test_a_change_builds_and_removes_only_its_directories(tmp_path: Path) -> None:
    reactor, store, entries = _open(tmp_path)
    a = fabricate_entry(store.layout, "a", write=True)
    c = fabricate_entry(store.layout, "c", write=True)
    for e in (a, c):
        _put(reactor, store, entries, e)
    where = models_dir(store.layout)
    name_a, name_c = a.descriptor.digest.hex, c.descriptor.digest.hex
    assert (where / name_a / "a").read_bytes() == b"a\n"
    assert {name_a, name_c} <= entries.built.directories
    # Someone removes c's directory: a change of another entry leaves it be
    # (it touches its own directories), the next start's full sync remakes it.
    shutil.rmtree(where / name_c)
    d = fabricate_entry(store.layout, "d", write=True)
    _put(reactor, store, entries, d)
    assert (where / d.descriptor.digest.hex / "d").is_file()
    assert not (where / name_c).exists()
    entries.sync_all()
    assert (where / name_c / "c").read_bytes() == b"c\n"
    # Removing an entry removes its directory, and only it.
    _remove(reactor, store, entries, a.url)
    assert not (where / name_a).exists() and name_a not in entries.built.directories
    assert (where / name_c).is_dir() and (where / d.descriptor.digest.hex).is_dir()


def test_a_directory_two_entries_name_stays_until_neither_does(tmp_path: Path) -> None:
    reactor, store, entries = _open(tmp_path)
    a = fabricate_entry(store.layout, "shared", write=True)
    b = attrs.evolve(a, url="https://other.invalid/shared")
    _put(reactor, store, entries, a)
    _put(reactor, store, entries, b)
    where = models_dir(store.layout) / a.descriptor.digest.hex
    _remove(reactor, store, entries, a.url)
    assert (where / "shared").read_bytes() == b"shared\n"
    assert a.descriptor.digest.hex in entries.built.directories
    _remove(reactor, store, entries, b.url)
    assert not where.exists()
    assert a.descriptor.digest.hex not in entries.built.directories


def test_a_blob_two_entries_hold_keeps_its_other_user(tmp_path: Path) -> None:
    reactor, store, entries = _open(tmp_path)
    a = fabricate_entry(store.layout, "both", write=True)
    b = attrs.evolve(a, url="https://other.invalid/both")
    c = fabricate_entry(store.layout, "alone", write=True)
    for e in (a, b, c):
        _put(reactor, store, entries, e)
    blob = a.primary.digest
    _remove(reactor, store, entries, a.url)
    assert store.layout.has_blob(blob)
    reactor.advance(100.0)
    store.touch_blob(blob.hex)  # a /v2 read of the blob is a use of b
    assert store.last_used(b.url) == reactor.seconds()
    assert store.last_used(c.url) != reactor.seconds()
    _remove(reactor, store, entries, b.url)
    assert not store.layout.has_blob(blob)
    assert store.layout.has_blob(c.primary.digest)
