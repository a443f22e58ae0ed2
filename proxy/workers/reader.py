"""A reader process of ``--workers`` (see :mod:`proxy.workers`): the cache
opened read-only, the reads it answers itself, the rest handed to the writer.

It never writes to the cache: no lock, no ``index.json``, no blob, no
last-used.json (its uses go to the writer over the link). It stops when the
writer goes away (its end of the link reads EOF).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from proxy import metrics
from proxy.api.content import ContentAPI, display_path
from proxy.api.registry import RegistryAPI
from proxy.api.root import Root
from proxy.cache import journal
from proxy.cache.catalog import Catalog
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.config import Config
from proxy.service.downloads import Downloads
from proxy.service.sources import LocalBlobs
from proxy.threads import in_thread
from proxy.types import HEX_RE
from proxy.web.channel import PlainHTTPChannel
from proxy.web.sendfile import BlobSender, transport_drained
from proxy.web.site import LoggingSite
from proxy.workers.link import ReaderEnd

log = logging.getLogger("proxy")
LISTEN_FD = 3  # the writer's listening socket, inherited
LINK_FD = 4  # this reader's end of the socket pair to the writer
USES_INTERVAL = 1.0  # seconds between two reports of last uses to the writer
_READS = (b"GET", b"HEAD")


class Reader:
    """What this reader answers (:meth:`local`) and the way to the writer
    for the rest (:meth:`take`): the site's ``handoff``."""

    def __init__(self, reactor: Any, store: Store, index: journal.Follower, mirror: bool) -> None:
        self._reactor = reactor
        self.store = store
        self.index = index
        self.mirror = mirror
        self.link: ReaderEnd | None = None
        self._blobs_dir = str(store.layout.blobs_dir) + os.sep
        self._loading = False
        self._again = False
        self._reported: dict[str, float] = {}

    # -- what is answered here ---------------------------------------------------

    def local(self, method: bytes, target: bytes) -> bool:
        if method not in _READS:
            return False
        path = target.partition(b"?")[0]
        if path == b"/healthz":
            return True
        # /metrics and /content/<url> go to the writer: it refreshes the gauges
        # it owns before it sums every process's figures (a reader's copy may be
        # a second old), and it knows each entry's model directory and the
        # state of its download (a reader has only index.json).
        if not self.index.current():
            self.reload()  # the writer answers until this reader has the new index
            return False
        if path.startswith(b"/v2/") or path == b"/v2":
            return self._registry_local(path)
        return path.startswith(b"/hf/")

    def _registry_local(self, path: bytes) -> bool:
        if b"/blobs/uploads" in path:
            return False  # a push session: the writer's
        if not self.mirror:
            return True  # the index is current: the writer would answer the same
        # A mirror fills misses and revalidates tags: only what is here stays here.
        for marker in (b"/blobs/sha256:", b"/manifests/sha256:"):
            i = path.rfind(marker)
            if i > 0:
                hex_ = path[i + len(marker) :].decode("ascii", "replace")
                return bool(HEX_RE["sha256"].fullmatch(hex_)) and os.path.isfile(
                    self._blobs_dir + hex_
                )
        return False

    # -- the rest goes to the writer -------------------------------------------------

    def take(self, channel: PlainHTTPChannel, raw: bytes) -> None:
        transport: Any = channel.transport
        if transport is None or transport.disconnected:
            return
        if transport_drained(transport) is False or self.link is None:
            # An answer before this request is still going out: wait for it.
            self._reactor.callLater(0.002, self.take, channel, raw)
            return
        sock: socket.socket = transport.socket

        def sent() -> None:
            transport._shouldShutdown = False  # close our copy; the writer's stays open
            transport.loseConnection()

        self.link.send_connection(sock, raw, sent)

    # -- keeping up with the writer ----------------------------------------------

    def reload(self) -> None:
        """Catch up with the writer's journal (read in a thread), then serve
        what it says; everything again when a generation was missed."""
        if self._loading:
            self._again = True
            return
        self._loading = True
        self._again = False
        follower = self.index

        def catch_up() -> Any:
            found = follower.catch_up()
            if found is None:
                return load_all(self.store.layout, self._reactor, follower)
            records, advance = found
            return self.store.prepare(records), advance

        def caught_up(result: Any) -> None:
            if isinstance(result, Store):
                self.store.take_over(result)
                return
            changes, advance = result
            self.store.apply(changes)
            advance()

        def failed(f: Failure) -> None:
            log.warning("reader: cannot follow %s: %s", follower.path, f.value)

        def done(_: object) -> None:
            self._loading = False
            if self._again and not self.index.current():
                self.reload()

        d = in_thread(self._reactor, catch_up)
        d.addCallbacks(caught_up, failed).addBoth(done)

    def report_uses(self) -> None:
        """Send the writer the last uses seen since the previous report."""
        if self.link is None:
            return
        changed = {u: t for u, t in self.store.uses().items() if self._reported.get(u) != t}
        if changed:
            self._reported.update(changed)
            self.link.send_uses(changed)


def load_all(layout: Layout, reactor: Any, follower: journal.Follower) -> Store:
    """The entries as they are now (blocking): the journal opened first, then
    index.json, then the journal replayed; ``follower`` then holds the
    journal -- call it on the reactor only before serving, or hand the store
    to :meth:`Store.take_over` (the follower's fields are set here, in the
    thread, while the reactor does not read them: it waits for the result)."""
    opened = follower.open()
    try:
        index = layout.read_index_bytes()
        records, end = follower.read(opened[0], opened[2])
        store = Store(layout, reactor, reactor)
        store.load_from(index, records)
    except BaseException:
        os.close(opened[0])
        raise
    follower.hold((opened[0], opened[1], end))
    return store


def _watch_index(reactor: Any, reader: Reader) -> None:
    """Catch up as soon as the writer appends to the journal or renames a
    new generation in (inotify); without it, the first request that finds the
    journal longer does."""
    try:
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath
    except ImportError:
        return

    def changed(_watch: object, path: FilePath[Any], _mask: int) -> None:
        name = path.basename()
        if name in ("index.journal", b"index.journal") and not reader.index.current():
            reader.reload()

    try:
        notifier = inotify.INotify(reactor)
        notifier.startReading()
        notifier.watch(
            FilePath(str(reader.store.layout.root)),
            mask=inotify.IN_MOVED_TO | inotify.IN_MODIFY,
            callbacks=[changed],
        )
    except Exception as e:  # no inotify here (another OS, no watches left): requests notice
        log.debug("reader: no inotify (%s); index changes are noticed by requests", e)


def build(config: Config, reactor: Any) -> tuple[LoggingSite, Reader]:
    """The reader's site: the API of :func:`proxy.server.build` on a
    read-only store, every change and writer-only state handed to the writer."""
    layout = Layout(config.cache_dir, direct_writes=False)
    index = journal.Follower(layout.journal_path)
    store = load_all(layout, reactor, index)
    catalog = Catalog(store, upstream=config.upstream)
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=32, name="sendfile")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    sender = BlobSender(reactor, reactor, pool)
    registry = RegistryAPI(layout, catalog, sender, LocalBlobs(layout, catalog))
    # Never asked to change anything (those requests are the writer's), so no fetchers.
    downloads = Downloads(reactor, reactor, store, {})
    root = Root(
        ContentAPI(downloads),
        registry,
        config.api_token,
        config.protect_reads,
        None,
        None,
        config.cluster_token,
    )
    root.show_pid = config.verbose >= 1
    reader = Reader(reactor, store, index, config.mirror)
    site = LoggingSite(root)  # type: ignore[no-untyped-call]
    site.admission = root.access
    site.display_path = display_path
    site.handoff = reader
    if not (config.protect_reads and config.api_token is not None):
        site.fast_blobs = registry.fast_blob
    _watch_index(reactor, reader)
    return site, reader


def run(config: Config, family: int) -> int:
    """The reader's life: serve from the inherited socket until told to stop
    or until the writer is gone."""
    from twisted.internet import reactor

    from proxy.workers.link import ReaderEnd

    r: Any = reactor
    site, reader = build(config, r)

    ports: list[Any] = []

    def writer_gone() -> None:
        for port in ports:
            port.stopListening()  # no new client is accepted here from now on
        if r.running:
            log.info("reader %d: the writer is gone; stopping", os.getpid())
            r.stop()

    from twisted.internet.protocol import Factory

    link = ReaderEnd(r, writer_gone)
    r.adoptStreamConnection(LINK_FD, socket.AF_UNIX, Factory.forProtocol(lambda: link))
    os.close(LINK_FD)
    reader.link = link
    ports.append(r.adoptStreamPort(LISTEN_FD, family, site))
    os.close(LISTEN_FD)
    uses = LoopingCall(reader.report_uses)
    uses.clock = r
    uses.start(USES_INTERVAL, now=False)
    figures = LoopingCall(metrics.refresh)  # this process's memory and descriptors
    figures.clock = r
    figures.start(USES_INTERVAL)
    log.debug("reader %d serving", os.getpid())
    r.run()
    sys.stdout.flush()
    return 0
