"""Entries of the cache and the references between them and their blobs.

The store keeps ``index.json`` in memory (the one writer is this process, see
:meth:`Layout.lock`), answers which entry a URL names, persists every change
as a line of ``index.journal`` before it is answered, rewrites ``index.json``
from memory when the journal says so (:mod:`proxy.cache.journal`), and on
removal deletes exactly the blobs no remaining entry references. Descriptors
it does not own -- entries written by the Go storage-manager, or anything
another tool put in the layout -- are kept verbatim and everything they
reference is treated as in use.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.failure import Failure

from proxy import heap
from proxy.cache import artifact, grammar, indexstream, journal, modelpackout
from proxy.cache.layout import Layout
from proxy.errors import BadRequest, Conflict
from proxy.naming import reference_for_url
from proxy.threads import in_thread
from proxy.types import (
    ANNOTATION_CREATED,
    ANNOTATION_KIND,
    ANNOTATION_PINNED,
    ANNOTATION_PRIMARY,
    ANNOTATION_REF_NAME,
    ANNOTATION_URL,
    HEX_RE,
    Descriptor,
    Digest,
)

log = logging.getLogger(__name__)


# Kinds stored as an artifact manifest of titled files (the rest: manifests as fetched).
FILE_KINDS = frozenset({"file", "hf", "s3", "blob"})


def _digests(blobs: Iterable[Digest]) -> tuple[Digest, ...]:
    """Each digest once, in order: a tuple costs a third of a frozenset of
    the few blobs an entry has (a cache holds 100,000s of entries)."""
    return tuple(dict.fromkeys(blobs))


@attrs.frozen
class Entry:
    """One cached URL: the descriptor in ``index.json`` and what it holds."""

    url: str
    reference: str
    descriptor: Descriptor
    files: tuple[Descriptor, ...]
    primary: Descriptor  # the file a consumer opens: /content's "digest"
    blobs: tuple[Digest, ...] = attrs.field(converter=_digests)  # everything it keeps alive
    kind: str
    created: str
    legacy: bool = False
    complete: bool = True
    raw: dict[str, Any] | None = attrs.field(default=None, eq=False)

    @property
    def size(self) -> int:
        """Bytes of all its files (``files``): what /content reports as ``size``."""
        return sum(f.size for f in self.files)

    @property
    def pinned(self) -> bool:
        return self.descriptor.annotations.get(ANNOTATION_PINNED) == "true"

    def index_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return self.raw
        return self.descriptor.to_json()


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_entry(
    url: str,
    kind: str,
    manifest: Descriptor,
    files: list[Descriptor],
    primary: Descriptor,
    *,
    blobs: set[Digest],
    reference: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Entry:
    """An entry for content this server stored (every blob already in blobs/)."""
    created = now_rfc3339()
    reference = reference or reference_for_url(url)
    descriptor = attrs.evolve(
        manifest,
        annotations={
            ANNOTATION_REF_NAME: reference,
            ANNOTATION_URL: url,
            ANNOTATION_KIND: kind,
            ANNOTATION_CREATED: created,
            ANNOTATION_PRIMARY: str(primary.digest),
            **(annotations or {}),
        },
    )
    return Entry(
        url=url,
        reference=reference,
        descriptor=descriptor,
        files=tuple(files),
        primary=primary,
        blobs=[*blobs, manifest.digest, *(f.digest for f in files)],
        kind=kind,
        created=created,
    )


class Store:
    """The entries of one cache directory."""

    def __init__(
        self, layout: Layout, reactor: IReactorThreads, clock: IReactorTime | None = None
    ) -> None:
        self.layout = layout
        self._reactor = reactor
        self._clock = clock  # last uses are its seconds (None: the system's clock)
        self._entries: dict[str, Entry] = {}
        self._foreign: list[dict[str, Any]] = []
        self._foreign_blobs: set[Digest] = set()
        self._index_meta: dict[str, Any] = {"schemaVersion": 2}
        self._write_lock = DeferredLock()
        # Held while blobs are committed or deleted; see hold().
        self.blob_lock = DeferredLock()
        self._held: Counter[Digest] = Counter()
        self._ingest_locks: dict[str, DeferredLock] = {}
        # Last use per entry URL (seconds since the epoch), saved in batches to
        # last-used.json, never by rewriting index.json; and which entries use a
        # blob (by its hex), so a /v2 read of any of its blobs counts as a use.
        self._last_used: dict[str, float] = {}
        # Almost every blob has one user: its URL alone, a set only beyond one
        # (a set costs 216 bytes; a cache of 100,000 entries holds 200,000 of these).
        self._users: dict[str, str | set[str]] = {}
        self._used_dirty = False
        self._reading: Counter[str] = Counter()  # blob hex -> answers streaming it
        # The writer's journal (open_journal); None: changes rewrite index.json.
        self._journal: journal.Journal | None = None
        self._empty_journal = False  # a clean stop: the next compaction empties the journal
        self._index_bytes = 0  # of index.json as last written
        self._compacting = False
        self._compact_waiters: list[Deferred[None]] = []
        # Entries changed since the views last looked (take_changes): each URL's
        # entry as it was before the first of those changes (None: there was none).
        self._changed: dict[str, Entry | None] = {}
        # While load() runs: the blobs on disk, listed once (algorithm -> hex names),
        # so an entry costs no stat of each of its blobs; None: ask the filesystem.
        self._present: dict[str, set[str]] | None = None

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    # -- loading (blocking; at startup, before the reactor serves) ----------------

    def load(self, index: dict[str, Any] | None = None) -> None:
        """Read ``index.json`` with ``index.journal`` replayed over it (or
        ``index``, the two read and merged elsewhere)."""
        if index is None:
            _, records, _, _ = journal.read_file(self.layout.journal_path)
            self.load_from(self.layout.read_index_bytes(), records)
            return
        manifests = index["manifests"]

        def each(use: Callable[[Any], None]) -> dict[str, Any]:
            for raw in manifests:
                use(raw)
            return {k: v for k, v in index.items() if k != "manifests"}

        self._fill(each)

    def load_from(self, data: bytes, records: list[journal.Record]) -> None:
        """Read the bytes of ``index.json`` with ``records`` (the journal's)
        replayed over them, one descriptor at a time (:mod:`proxy.cache.indexstream`)."""
        try:
            self._fill(lambda use: indexstream.read(data, records, use))
        except indexstream.Irregular:
            self._entries, self._users = {}, {}
            self._foreign, self._foreign_blobs = [], set()
            self.load(journal.merge(self.layout.parse_index(data), records))

    def _fill(self, each: Callable[[Callable[[Any], None]], dict[str, Any]]) -> None:
        """Make the entries of the descriptors ``each`` passes on, then keep the
        rest of the index it returns."""
        # Listed after index.json was read: every blob its entries name is committed by now.
        self._present = {a: self.layout.blob_names(a) for a in HEX_RE}
        # No cycle collection while the table grows: what a load makes and drops
        # (parsed JSON, manifests) has no cycles, and each collection would walk
        # every object made so far (2 of 5.5 s at 100,000 entries).
        collecting = gc.isenabled()
        gc.disable()
        try:
            head = each(self._add_loaded)
        finally:
            self._present = None
            if collecting:
                gc.enable()
        heap.trim()  # what reading the manifests left free in the C heap
        self._index_meta = head
        self._index_meta.setdefault("schemaVersion", 2)
        recorded = self.layout.read_last_used()
        self._last_used = {u: t for u, t in recorded.items() if u in self._entries}

    def _add_loaded(self, raw: Any) -> None:
        desc, entry = self._read_descriptor(raw)
        if entry is None or entry.url in self._entries:
            self._foreign.append(raw)
            if desc is not None:
                self._foreign_blobs |= set(self._closure(desc))
        else:
            self._entries[entry.url] = entry
            self._index_users(entry)

    def _read_descriptor(self, raw: Any) -> tuple[Descriptor | None, Entry | None]:
        """A descriptor of index.json, and the entry it is (None: kept as is)."""
        try:
            desc = Descriptor.from_json(raw)
        except ValueError as e:
            log.warning("index.json: keeping a descriptor this server cannot read: %s", e)
            return None, None
        ann = desc.annotations
        if ANNOTATION_URL in ann:
            entry = self._load_own(desc)
        elif "://" in ann.get(ANNOTATION_REF_NAME, ""):
            entry = self._load_legacy(desc, raw)
        else:
            entry = None
        if entry is not None and (problem := grammar.entry_problem(entry, False)) is not None:
            # Never served nor given a view; kept for whatever wrote it.
            log.warning(
                "index.json: keeping the descriptor of %r as is, not as an entry: %s",
                entry.url[:200],
                problem,
            )
            entry = None
        return desc, entry

    def open_journal(self) -> None:
        """Make this store the cache's writer: changes go to ``index.journal``
        (blocking; at startup, after :meth:`load`)."""
        self._journal = journal.Journal(self._reactor, self.layout.journal_path)
        self._journal.open()
        try:
            self._index_bytes = os.stat(self.layout.index_path).st_size
        except OSError:
            self._index_bytes = 0

    def close(self) -> Deferred[None]:
        """At a clean stop: bring index.json up to date (what OCI tools read)."""
        j = self._journal
        if j is None or j.records() == 0:
            return succeed(None)
        # Nothing left in the journal after a clean stop: index.json alone is the
        # cache, as another program (or this one, restarted) reads and checks it.
        self._empty_journal = True
        return self._compact().addErrback(self._compaction_failed)

    def prepare(self, records: list[journal.Record]) -> list[tuple[str, Entry | None]]:
        """What journal records (written by the writer) change (blocking: reads
        manifests); for :meth:`apply` on the reactor. A reader's catch-up."""
        out: list[tuple[str, Entry | None]] = []
        for record in records:
            if "put" in record:
                _, entry = self._read_descriptor(record["put"])
                if entry is not None:
                    out.append((entry.url, entry))
            elif isinstance(record.get("remove"), str):
                out.append((record["remove"], None))
        return out

    def apply(self, changes: list[tuple[str, Entry | None]]) -> None:
        """Apply what :meth:`prepare` read (a read-only reader's store)."""
        for url, entry in changes:
            old = self._entries.pop(url, None)
            if old is not None:
                self._unindex_users(old)
            if entry is not None:
                self._entries[url] = entry
                self._index_users(entry)
            else:
                self._last_used.pop(url, None)

    def _has_blob(self, digest: Digest) -> bool:
        present = self._present
        if present is not None:
            return digest.hex in present.get(digest.algorithm, ())
        return self.layout.has_blob(digest)

    def _closure(self, desc: Descriptor) -> dict[Digest, Descriptor]:
        """Descriptors reachable from ``desc`` through manifests on disk, in
        order (``desc`` first)."""
        seen: dict[Digest, Descriptor] = {}
        todo = [desc]
        while todo:
            d = todo.pop(0)
            if d.digest in seen:
                continue
            seen[d.digest] = d
            if d.media_type in artifact.MANIFEST_MEDIA_TYPES and self._has_blob(d.digest):
                try:
                    data = self.layout.read_manifest(d.digest)
                    todo.extend(artifact.children(d.media_type, data))
                except FileNotFoundError:
                    pass  # removed since it was listed: as if it were absent
                except ValueError as e:
                    log.warning("blob %s is not a readable manifest: %s", d.digest, e)
        return seen

    def _load_own(self, desc: Descriptor) -> Entry | None:
        ann = desc.annotations
        url = ann[ANNOTATION_URL]
        kind = ann.get(ANNOTATION_KIND, "file")
        if not self._has_blob(desc.digest):
            log.warning("entry %s: manifest %s is missing; kept as is", url, desc.digest)
            return None
        closure = self._closure(desc)
        if kind in FILE_KINDS:
            files = [c for c in closure.values() if artifact.title_of(c) is not None]
        else:
            files = [c for c in closure.values() if self._has_blob(c.digest)]
        # A set of files (a directory, a repository, a prefix) is named by its manifest.
        many = kind in FILE_KINDS and len(files) > 1
        primary: Descriptor | None = files[0] if kind in FILE_KINDS and files and not many else desc
        recorded = ann.get(ANNOTATION_PRIMARY)
        if recorded == str(desc.digest):
            primary = desc
        elif recorded is not None and not many:
            primary = next((f for f in files if str(f.digest) == recorded), None)
        if primary is None:
            log.warning("entry %s: manifest %s names no files; kept as is", url, desc.digest)
            return None
        # Its ModelPack artifact (proxy.cache.modelpackout) is kept alive with it.
        served_as = modelpackout.recorded(ann)
        extra = self._closure(served_as[1]) if served_as is not None else {}
        return Entry(
            url=url,
            reference=ann.get(ANNOTATION_REF_NAME) or reference_for_url(url),
            descriptor=desc,
            files=tuple(files),
            primary=primary,
            blobs=[*closure, *extra],
            kind=kind,
            created=ann.get(ANNOTATION_CREATED, ""),
        )

    def _load_legacy(self, desc: Descriptor, raw: dict[str, Any]) -> Entry:
        """An entry of the Go storage-manager: ref.name is the raw URL and the
        descriptor names the downloaded blob itself (often with size 0)."""
        url = desc.annotations[ANNOTATION_REF_NAME]
        size = self.layout.blob_size(desc.digest)
        primary = attrs.evolve(desc, size=size if size is not None else desc.size, annotations={})
        complete = size is not None
        return Entry(
            url=url,
            reference=reference_for_url(url),
            descriptor=desc,
            files=(primary,),
            primary=primary,
            blobs=self._closure(desc),
            kind="legacy",
            created="",
            legacy=True,
            complete=complete,
            raw=raw,
        )

    # -- queries -------------------------------------------------------------

    def get(self, url: str) -> Entry | None:
        return self._entries.get(url)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def ingest_lock(self, key: str) -> DeferredLock:
        """One writer at a time per ingest directory (a digest or a URL)."""
        lock = self._ingest_locks.get(key)
        if lock is None:
            lock = self._ingest_locks[key] = DeferredLock()
        return lock

    def referenced_bytes(self) -> int:
        """Bytes of the blobs the entries reference, each blob once (manifests
        and files; a config counts when the entry lists it)."""
        sizes: dict[Digest, int] = {}
        for e in self._entries.values():
            sizes[e.descriptor.digest] = e.descriptor.size
            for f in e.files:
                sizes[f.digest] = f.size
        return sum(sizes.values())

    def ingests_in_use(self) -> set[str]:
        """Ingest directories a writer holds right now."""
        return {k for k, lock in self._ingest_locks.items() if lock.locked}

    def hold(self, digest: Digest) -> None:
        """Keep a blob alive for a download that has not stored its entry yet."""
        self._held[digest] += 1

    def release(self, digest: Digest) -> None:
        self._held[digest] -= 1
        if self._held[digest] <= 0:
            del self._held[digest]

    def referenced(
        self, exclude: str | None = None, *, excluding: Collection[str] = ()
    ) -> set[Digest]:
        """Blobs in use: by foreign descriptors, held, and by every entry but
        ``exclude`` and those in ``excluding``."""
        refs = set(self._foreign_blobs) | set(self._held)
        for url, e in self._entries.items():
            if url != exclude and url not in excluding:
                refs.update(e.blobs)
        return refs

    def user_of(self, digest: Digest) -> str | None:
        """Something that references a blob -- an entry's URL, or "a descriptor
        this server does not own" -- or None when nothing does (holds aside)."""
        for url, e in self._entries.items():
            if digest in e.blobs:
                return url
        if digest in self._foreign_blobs:
            return "a descriptor of index.json this server does not own"
        return None

    def holds(self, digest: Digest) -> int:
        """How many holds (downloads, pushes) keep a blob alive right now."""
        return self._held.get(digest, 0)

    # -- changes -------------------------------------------------------------

    # -- last use ------------------------------------------------------------

    def _index_users(self, entry: Entry) -> None:
        url = entry.url
        for d in entry.blobs:
            users = self._users.setdefault(d.hex, url)
            if isinstance(users, set):
                users.add(url)
            elif users != url:
                self._users[d.hex] = {users, url}

    def _unindex_users(self, entry: Entry) -> None:
        url = entry.url
        for d in entry.blobs:
            users = self._users.get(d.hex)
            if isinstance(users, set):
                users.discard(url)
                if len(users) == 1:
                    self._users[d.hex] = next(iter(users))
            elif users == url:
                del self._users[d.hex]

    def users(self, hex_: str) -> tuple[str, ...]:
        """The URLs of the entries that hold a blob (by its hex)."""
        users = self._users.get(hex_)
        if users is None:
            return ()
        return (users,) if isinstance(users, str) else tuple(users)

    def touch(self, url: str) -> None:
        """The entry of ``url`` was just used (a /content GET or POST)."""
        if url in self._entries:
            self._last_used[url] = self._now()
            self._used_dirty = True

    def touch_blob(self, hex_: str) -> None:
        """A blob was just read through /v2: every entry holding it was used."""
        users = self.users(hex_)
        if users:
            now = self._now()
            for url in users:
                self._last_used[url] = now
            self._used_dirty = True

    def reading(self, hex_: str) -> Callable[[], None]:
        """A /v2 answer streams this blob: its entries are not evicted until
        the returned function is called (once is enough; more are ignored)."""
        self._reading[hex_] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._reading[hex_] -= 1
            if self._reading[hex_] <= 0:
                del self._reading[hex_]

        return release

    def being_read(self, entry: Entry) -> bool:
        return any(d.hex in self._reading for d in entry.blobs)

    def set_pin(self, url: str, pin: bool) -> Deferred[Entry]:
        """Pin (never evicted) or unpin an entry; persisted in index.json."""
        entry = self._entries[url]
        if entry.legacy:
            raise Conflict("entries of the Go storage-manager are kept as they are (never evicted)")
        ann = {k: v for k, v in entry.descriptor.annotations.items() if k != ANNOTATION_PINNED}
        if pin:
            ann[ANNOTATION_PINNED] = "true"
        updated = attrs.evolve(entry, descriptor=attrs.evolve(entry.descriptor, annotations=ann))
        self._entries[url] = updated
        return self._persist([{"put": updated.index_json()}]).addCallback(lambda _: updated)

    def lru(self) -> list[Entry]:
        """Entries, least recently used first (never used: by creation)."""
        return sorted(
            self._entries.values(), key=lambda e: (self._last_used.get(e.url, 0.0), e.created)
        )

    def last_used(self, url: str) -> float | None:
        return self._last_used.get(url)

    def uses(self) -> dict[str, float]:
        """Every recorded last use (the live map: read it, do not change it)."""
        return self._last_used

    def merge_uses(self, used: dict[str, float]) -> None:
        """Last uses another process saw (a reader of :mod:`proxy.workers`):
        kept where they are later than ours, for entries that still exist."""
        for url, at in used.items():
            if url in self._entries and at > self._last_used.get(url, 0.0):
                self._last_used[url] = at
                self._used_dirty = True

    def take_over(self, other: Store) -> None:
        """Serve what ``other`` loaded (a newer ``index.json``) from now on;
        for a read-only reader of the cache, which never changes it itself."""
        self._entries = other._entries
        self._foreign = other._foreign
        self._foreign_blobs = other._foreign_blobs
        self._index_meta = other._index_meta
        self._users = other._users
        for url, at in other._last_used.items():
            if at > self._last_used.get(url, 0.0):
                self._last_used[url] = at
        self._last_used = {u: t for u, t in self._last_used.items() if u in self._entries}

    def save_last_used(self) -> Deferred[None]:
        """Write the last-use times if they changed (atomically, in a thread)."""
        if not self._used_dirty:
            return succeed(None)
        self._used_dirty = False
        snapshot = dict(self._last_used)
        return in_thread(self._reactor, self.layout.write_last_used, snapshot)

    # -- changes -------------------------------------------------------------

    def put(self, entry: Entry) -> Deferred[None]:
        """Add or replace an entry and persist index.json."""
        self._set(entry)
        return self._persist([{"put": entry.index_json()}])

    def take_changes(self) -> list[tuple[Entry | None, Entry | None]]:
        """Every entry changed since the last call: (as it was then, as it is
        now), None where there was or is none; for the views
        (:mod:`proxy.service.entries`), which follow the entries change by change."""
        changed, self._changed = self._changed, {}
        return [(old, self._entries.get(url)) for url, old in changed.items()]

    def _set(self, entry: Entry) -> None:
        old = self._entries.get(entry.url)
        self._changed.setdefault(entry.url, old)
        if old is not None:
            self._unindex_users(old)
        self._entries[entry.url] = entry
        self._index_users(entry)
        self._last_used[entry.url] = self._now()
        self._used_dirty = True

    def remove(self, url: str) -> Deferred[int]:
        """Remove an entry and the blobs only it referenced; fire with bytes freed."""
        entry = self._entries.pop(url)
        self._changed.setdefault(url, entry)
        self._unindex_users(entry)
        if self._last_used.pop(url, None) is not None:
            self._used_dirty = True
        d = self._persist([{"remove": url}])

        def delete_blobs() -> Deferred[int]:
            # Computed under the blob lock, so a commit cannot re-use a blob
            # between this check and its deletion.
            # Not every entry's blobs (O(entries)): those of this one no user holds.
            orphans = {
                b
                for b in entry.blobs
                if b.hex not in self._users and b not in self._foreign_blobs and b not in self._held
            }
            return in_thread(
                self._reactor,
                lambda: sum(self.layout.remove_blob(b) for b in orphans),
            )

        return d.addCallback(lambda _: self.blob_lock.run(delete_blobs))

    def collect(self) -> Deferred[tuple[int, int]]:
        """Remove every blob no entry references and no download holds; fire
        with (blobs removed, bytes freed). Under the blob lock, like commits."""

        def locked() -> Deferred[tuple[int, int]]:
            keep = self.referenced()

            def sweep() -> tuple[int, int]:
                count = freed = 0
                for algorithm, pattern in HEX_RE.items():
                    where = self.layout.algorithm_dir(algorithm)
                    for p in where.iterdir() if where.is_dir() else []:
                        if not pattern.fullmatch(p.name):
                            continue
                        digest = Digest(p.name, algorithm)
                        if digest in keep:
                            continue
                        freed += self.layout.remove_blob(digest)
                        count += 1
                return count, freed

            return in_thread(self._reactor, sweep)

        return self.blob_lock.run(locked)

    def adopt(self, descriptors: list[Any]) -> Deferred[list[Entry]]:
        """Add entries from another layout's index (an imported bundle) whose
        blobs are all in blobs/ by now; a descriptor without this server's
        URL annotation gets ``oci-layout:<ref.name or digest>`` as its URL.
        Raise BadRequest (adding nothing) if one is unusable."""
        from proxy.cache.catalog import is_pushed, push_conflict, served
        from proxy.cache.verify import needed

        entries: list[Entry] = []
        for raw in descriptors:
            try:
                desc = Descriptor.from_json(raw)
            except (ValueError, TypeError, AttributeError) as e:
                raise BadRequest(f"bundle index: bad descriptor: {e}") from None
            ann = dict(desc.annotations)
            problem = grammar.annotations_problem(ann)
            if problem is not None:
                raise BadRequest(f"bundle index: {problem}")
            if ANNOTATION_URL not in ann:
                ann[ANNOTATION_URL] = f"oci-layout:{ann.get(ANNOTATION_REF_NAME) or desc.digest}"
                ann.setdefault(ANNOTATION_KIND, "image")
            desc = attrs.evolve(desc, annotations=ann)
            invalid: list[tuple[Digest, str]] = []
            for digest, required in needed(self.layout, desc, ann[ANNOTATION_KIND], invalid):
                if required and not self.layout.has_blob(digest):
                    raise BadRequest(f"{ann[ANNOTATION_URL]} needs {digest}, not in the bundle")
            if invalid:
                raise BadRequest(f"{ann[ANNOTATION_URL]}: {invalid[0][1]}")
            entry = self._load_own(desc)
            if entry is None:
                raise BadRequest(f"{ann[ANNOTATION_URL]}: not an entry this server can serve")
            problem = grammar.entry_problem(entry)
            if problem is not None:
                raise BadRequest(f"{ann[ANNOTATION_URL][:200]}: {problem}")
            entries.append(entry)
        # An imported push is held to the rule of pushes (proxy.naming).
        everything = [*self._entries.values(), *entries]
        for entry in entries:
            s = served(entry) if is_pushed(entry) else None
            reason = push_conflict(s.name, everything) if s is not None else None
            if reason is not None:
                raise BadRequest(f"{entry.url}: {reason}")
        for entry in entries:
            self._set(entry)
        records = [{"put": e.index_json()} for e in entries]
        return self._persist(records).addCallback(lambda _: entries)

    def _snapshot(self) -> dict[str, Any]:
        manifests = list(self._foreign) + [e.index_json() for e in self._entries.values()]
        return {**self._index_meta, "manifests": manifests}

    def _persist(self, records: list[journal.Record]) -> Deferred[None]:
        """Fire once the change is durable: its journal records written, and
        index.json rewritten too while it is small (journal.EAGER_BYTES)."""
        j = self._journal
        if j is None:  # not the writer of a cache (tests, tools): index.json alone

            def locked() -> Deferred[None]:
                snapshot = self._snapshot()
                return in_thread(self._reactor, self.layout.write_index, snapshot)

            return self._write_lock.run(locked)

        def appended(_: None) -> Deferred[None] | None:
            if self._index_bytes <= journal.EAGER_BYTES:
                return self._compact().addErrback(self._compaction_failed)
            # Half of index.json's size in changes (at least MIN_BYTES); MIN_BYTES 0
            # (a test's setting) compacts after every change.
            every = journal.MIN_BYTES == 0
            if every or j.records() >= max(journal.MIN_BYTES, self._index_bytes // 2):
                self._compact().addErrback(self._compaction_failed)
            return None

        return j.append(records).addCallback(appended)

    @staticmethod
    def _compaction_failed(f: Failure) -> None:
        # The changes are in the journal: nothing is lost, the next one tries again.
        log.warning("index.json could not be rewritten: %s", f.getErrorMessage())

    def _compact(self) -> Deferred[None]:
        """Rewrite index.json from memory (in a thread), then start the
        journal's next generation with what came after the snapshot; fire when
        a compaction that started after this call is done."""
        d: Deferred[None] = Deferred()
        self._compact_waiters.append(d)
        if not self._compacting:
            self._run_compaction()
        return d

    def _run_compaction(self) -> None:
        j = self._journal
        assert j is not None
        self._compacting = True
        waiters, self._compact_waiters = self._compact_waiters, []
        since = j.queued_end  # every change made so far is in the snapshot
        entries = list(self._entries.values())
        head = {**self._index_meta}
        foreign = list(self._foreign)

        def write() -> int:
            index = {**head, "manifests": foreign + [e.index_json() for e in entries]}
            return self.layout.write_index_file(index)

        def written(size: int) -> Deferred[None] | None:
            self._index_bytes = size
            if size > journal.EAGER_BYTES or j.records() >= journal.MIN_BYTES:
                return j.rotate(since)
            if self._empty_journal:
                return j.rotate(since)
            return None

        def done(result: object) -> None:
            self._compacting = False
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)
            if self._compact_waiters:
                self._run_compaction()

        in_thread(self._reactor, write).addCallback(written).addBoth(done)
