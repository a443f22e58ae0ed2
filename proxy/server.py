"""Wire a configured server: cache, store, fetchers, API, listener."""

from __future__ import annotations

import base64
import logging
import os
import socket
import stat
from typing import Any

import attrs
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource

from proxy import metrics
from proxy.api.admin import AdminAPI
from proxy.api.content import ContentAPI, display_path
from proxy.api.peers import PeerAPI
from proxy.api.push import PushAPI
from proxy.api.registry import RegistryAPI
from proxy.api.root import Root
from proxy.cache import direct, durable, verify
from proxy.cache.catalog import Catalog
from proxy.cache.durable import Syncer
from proxy.cache.layout import Layout
from proxy.cache.store import Store
from proxy.cache.uploads import Uploads
from proxy.config import Address, Config
from proxy.errors import UpstreamUnreachable
from proxy.fetch.azure import AzureFetcher
from proxy.fetch.base import Fetcher
from proxy.fetch.file import FileFetcher
from proxy.fetch.gcs import GcsFetcher
from proxy.fetch.hf import HfFetcher
from proxy.fetch.http import HttpFetcher
from proxy.fetch.oci import OciBlobFetcher, OciFetcher
from proxy.fetch.ollama import OllamaFetcher
from proxy.fetch.reach import ReachPolicy, is_loopback_host
from proxy.fetch.s3 import S3Fetcher, Signer
from proxy.fetch.transfer import HttpClient, TransferOptions
from proxy.request import Credentials, FetchRequest
from proxy.service.downloads import Downloads
from proxy.service.fanout import Fanout
from proxy.service.fills import MirrorBlobs
from proxy.service.forward import Origin
from proxy.service.jobs import Download
from proxy.service.membership import Membership
from proxy.service.mirror import Mirror
from proxy.service.peerfills import OriginFill, PeerBlobs, fill_url
from proxy.service.peerpull import PeerPull
from proxy.service.peerroute import PeerRoute
from proxy.service.sharedpull import SharedPull
from proxy.service.sharedtier import SharedTier
from proxy.service.sources import BlobSource, Chain, LocalBlobs
from proxy.shared.location import StoreLocation
from proxy.shared.opening import open_store
from proxy.threads import in_thread
from proxy.types import Digest
from proxy.units import human_size, plural
from proxy.web.sendfile import BlobSender
from proxy.web.site import LoggingSite

log = logging.getLogger("proxy")
LAST_USED_INTERVAL = 30.0  # seconds between two writes of last-used.json
SHUTDOWN_SYNC_WAIT = 60.0  # seconds a stop waits for committed blobs' fsyncs
GAUGES_INTERVAL = 1.0  # seconds between two writes of the gauges (--workers above 1)
PEER_CONNECT_TIMEOUT = 3.0  # seconds: a peer that does not accept by then is down
PEER_IDLE_TIMEOUT = 10.0  # seconds without a byte of a peer's stream: it is left
SHARED_CONNECT_TIMEOUT = 5.0  # seconds: a store that does not accept by then is skipped
SHARED_IDLE_TIMEOUT = 30.0  # seconds without a byte from the store
EVICT_INTERVAL = 60.0  # seconds between two checks of the cache's size (also after downloads)


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


@attrs.define
class Server:
    config: Config
    layout: Layout
    store: Store
    downloads: Downloads
    site: LoggingSite
    lock_fd: int
    admin: AdminAPI | None = None


def settle_unsynced(layout: Layout) -> None:
    """Before anything is served: blobs a crash left without a known fsync
    are fsync'd (same boot) or hashed again (after a reboot), and a blob that
    no longer matches is quarantined with the entries that need it."""
    syncer = layout.syncer or Syncer(layout.blobs_dir, layout.unsynced_dir)
    found = durable.recover(syncer)
    corrupt: list[Digest] = []
    for d in found.suspect:
        _, _, got, _ = verify.hash_file(layout.blob_path(d))  # read back from the disk
        if got == d.hex:
            syncer.forget(d)
        else:
            corrupt.append(d)
    if len(corrupt) < len(found.suspect):
        intact = len(found.suspect) - len(corrupt)
        log.info("%d blobs committed before a reboot hashed again: intact", intact)
    if corrupt:
        problems = tuple(
            verify.Problem("corrupt", str(layout.blob_path(d)), "not on disk before a reboot")
            for d in corrupt
        )
        report = verify.quarantine(layout, verify.Report(len(problems), 0, problems))
        for d in corrupt:
            syncer.forget(d)
        log.warning(
            "%d blobs were lost by a reboot before they reached the disk: quarantined %s; "
            "entries dropped (fetched again on the next POST): %s",
            len(corrupt),
            ", ".join(report.quarantined),
            ", ".join(report.dropped) or "none",
        )
    if layout.syncer is None:
        syncer.flush()  # --sync-commits: nothing is left unsynced once serving begins


def _choose_writes(layout: Layout) -> Layout:
    """Say how downloads reach the disk; buffered where the filesystem refuses O_DIRECT."""
    if not layout.direct_writes:
        log.info("downloads are written through the page cache (the default; --direct-writes)")
    elif direct.supported(layout.ingest_dir):
        log.info("downloads are written past the page cache (O_DIRECT), fsync'd before commit")
    else:
        log.info(
            "the cache's filesystem refuses O_DIRECT: downloads are written through the page cache"
        )
        layout = attrs.evolve(layout, direct_writes=False)
    return layout


def new_site() -> LoggingSite:
    """The site of the API; :func:`build` gives it its resources (a TCP port
    is bound before the cache is opened, so a port in use creates nothing)."""
    return LoggingSite(Resource())  # type: ignore[no-untyped-call]


def build(config: Config, reactor: Any, site: LoggingSite | None = None) -> Server:
    """Open the cache (taking its lock) and build every part into ``site``
    (a new one if None); nothing listens yet, unless the caller bound ``site``."""
    layout, lock_fd = _open_cache(config)
    store = Store(layout, reactor, reactor)
    try:
        store.load()
        store.open_journal()
    except ValueError as e:
        raise StartupError(f"cannot read {layout.index_path}: {e}") from None
    client = _origin_client(config, reactor)
    fetchers = _fetchers(config, reactor, layout, client)
    downloads = _downloads(config, reactor, store, fetchers)
    _keep_state(reactor, layout, store, downloads)
    _shared_tier(config, reactor, store, downloads, client)
    # Views are derived from the entries: rebuilt here, whatever a crash left.
    downloads.entries.sync_all()
    registry = _registry(config, reactor, store, downloads, fetchers["oci"])
    admin = AdminAPI(downloads)
    root = Root(
        ContentAPI(downloads),
        registry,
        config.api_token,
        config.protect_reads,
        admin,
        _cluster(config, reactor, store, downloads, registry, client),
        config.cluster_token,
    )
    root.show_pid = config.verbose >= 1
    site = _wire(site or new_site(), root, layout)
    if not (config.protect_reads and config.api_token is not None):
        # HEAD and small GETs of cached blobs skip twisted.web (proxy.web.channel);
        # with protected reads every request goes through Root's token check.
        site.fast_blobs = registry.fast_blob
    log.info(
        "cache %s: %s, %s",
        layout.root,
        plural(len(store.entries()), "entry", "entries"),
        plural(
            len([u for u in downloads.urls() if downloads.interrupted(u)]), "interrupted download"
        ),
    )
    return Server(config, layout, store, downloads, site, lock_fd, admin)


def _open_cache(config: Config) -> tuple[Layout, int]:
    """The cache's layout, created if new, its lock taken, what a crash left
    behind settled; and the lock's descriptor."""
    if config.cache_dir.exists() and not config.cache_dir.is_dir():
        raise StartupError(f"cache directory {config.cache_dir} is a file, not a directory")
    direct_writes = config.direct_writes and not config.buffered_writes
    layout = Layout(config.cache_dir, direct_writes=direct_writes)
    if not config.sync_commits:
        layout = layout.with_deferred_sync()
    try:
        layout.create()
        lock_fd = layout.lock()
    except PermissionError as e:
        raise StartupError(f"cannot use cache directory {config.cache_dir}: {e.strerror}") from None
    except OSError as e:
        raise StartupError(f"cannot use cache directory {config.cache_dir}: {e}") from None
    for p in layout.remove_stray_temp_files():
        log.info("removed stray temporary file %s", p)
    layout = _choose_writes(layout)
    settle_unsynced(layout)
    return layout, lock_fd


def _origin_client(config: Config, reactor: Any) -> HttpClient:
    """The HTTP client of every origin fetch (reach rules, proxies, retries)."""
    client = HttpClient(
        reactor,
        ReachPolicy(allow_hosts=config.allow_upstream),
        TransferOptions(
            idle_timeout=config.idle_timeout,
            attempts=config.retries + 1,
            backoff=config.retry_backoff,
        ),
        proxies=config.proxies,
    )
    proxy_line = config.proxies.describe()
    if proxy_line is not None:
        log.info("%s", proxy_line)
    return client


def _fetchers(
    config: Config, reactor: Any, layout: Layout, client: HttpClient
) -> dict[str, Fetcher]:
    """One fetcher per URL scheme, all on one HTTP client (reach rules, proxies)."""
    http = HttpFetcher(client, layout)
    hf = HfFetcher(client, layout)
    insecure = config.insecure_registries
    return {
        "http": http,
        "https": http,
        "oci": OciFetcher(client, layout, insecure=insecure),
        "ollama": OllamaFetcher(client, layout, insecure=insecure),
        "hf": hf,
        "huggingface": hf,
        "oci-blob": OciBlobFetcher(client, layout, insecure=insecure),
        "file": FileFetcher(reactor, layout, config.file_roots),
        "s3": S3Fetcher(client, layout, Signer(config.s3_addressing_style)),
        "gs": GcsFetcher(client, layout),
        "azure": AzureFetcher(client, layout),
    }


def _downloads(
    config: Config, reactor: Any, store: Store, fetchers: dict[str, Fetcher]
) -> Downloads:
    """Downloads, with the cache's size limit (checked every EVICT_INTERVAL)."""
    limit = config.max_cache_size
    root = store.layout.root

    def cache_limit() -> int | None:
        if limit is None:
            return None
        fs = os.statvfs(root)
        return limit.resolve(fs.f_blocks * fs.f_frsize)

    downloads = Downloads(
        reactor,
        reactor,
        store,
        fetchers,
        max_downloads=config.max_downloads,
        limit=cache_limit if limit is not None else None,
        low_watermark=config.low_watermark,
    )
    downloads.entries.limit = cache_limit if limit is not None else None
    downloads.scan_ingest()
    if limit is not None:
        downloads.eviction.start(EVICT_INTERVAL)
        log.info(
            "cache limit %s, evicting down to %d%%",
            human_size(cache_limit()),
            config.low_watermark * 100,
        )
    return downloads


def _keep_state(reactor: Any, layout: Layout, store: Store, downloads: Downloads) -> None:
    """Last uses saved in batches, blobs fsync'd at a clean stop, metrics bound."""
    saver = LoopingCall(store.save_last_used)
    saver.clock = reactor
    saver.start(LAST_USED_INTERVAL, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", store.save_last_used)
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    reactor.addSystemEventTrigger("before", "shutdown", downloads.log_interrupted)
    syncer = layout.syncer
    if syncer is not None:
        # A clean stop leaves every blob on disk (a bounded wait: markers cover the rest).
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: deferToThread(syncer.flush, SHUTDOWN_SYNC_WAIT)
        )
    metrics.bind(
        downloads.active,
        lambda: len(store.entries()),
        store.referenced_bytes,
        syncer.pending if syncer is not None else (lambda: 0),
    )
    if metrics.MULTIPROCESS:
        # Readers answer /metrics too: the gauges are written where they read them.
        gauges = LoopingCall(metrics.refresh)
        gauges.clock = reactor
        gauges.start(GAUGES_INTERVAL)


def _shared_tier(
    config: Config, reactor: Any, store: Store, downloads: Downloads, origin_client: HttpClient
) -> SharedTier | None:
    """With --shared-store: the object store as the cluster's second tier
    (read-through before the peers and the origin, write-back after each
    stored entry, cluster single flight when it honours conditional writes).
    The probe of conditional writes and the resumption of pending uploads
    run once the reactor runs; a clean stop finishes pending uploads first."""

    # The lease holder: how peers reach this node, and this cache's own id (every
    # node of a DaemonSet may listen on the same ":8050"; the id survives restarts,
    # so a lease taken before a crash is recognised as this node's own).
    def holder() -> str:  # made once a store is used (the id is a file in the cache)
        return f"{config.advertise_address or config.address}#{node_id(store.layout)}"

    main: list[SharedTier] = []

    def tier_for(where: StoreLocation) -> SharedTier:
        """The tier of a store location (export --to, import --from)."""
        if main and main[0].store.location == where:
            return main[0]
        shared = open_store(
            where, _store_client(config, reactor), config.proxies, config.s3_addressing_style
        )
        return SharedTier(shared, store, reactor, reactor, holder())

    downloads.tier_for = tier_for
    location = config.shared_store
    if location is None:
        return None
    tier = SharedTier(
        open_store(
            location, _store_client(config, reactor), config.proxies, config.s3_addressing_style
        ),
        store,
        reactor,
        reactor,
        holder(),
    )
    main.append(tier)
    origin_client.tier = tier
    downloads.shared = tier
    downloads.shared_pull = SharedPull(tier, store, reactor)
    log.info("shared store %s: read before the peers and the origin, written back", location)

    def start() -> None:
        d = Deferred.fromCoroutine(tier.start())
        d.addErrback(lambda f: log.error("shared store: start-up failed: %s", f.value))

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", tier.drain)
    return tier


def _store_client(config: Config, reactor: Any) -> HttpClient:
    """Outbound HTTP to an object store used as a tier: the store is the
    operator's own (--allow-upstream is for origins), short timeouts."""
    return HttpClient(
        reactor,
        ReachPolicy(),
        TransferOptions(
            idle_timeout=min(config.idle_timeout, SHARED_IDLE_TIMEOUT),
            connect_timeout=SHARED_CONNECT_TIMEOUT,
            attempts=2,
            backoff=0.2,
        ),
        proxies=config.proxies,
    )


def node_id(layout: Layout) -> str:
    """This cache's random id (``<cache>/node-id``, made once)."""
    path = layout.root / "node-id"
    try:
        text = path.read_text().strip()
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
    except FileNotFoundError:
        pass
    text = os.urandom(16).hex()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return text


def _registry(
    config: Config, reactor: Any, store: Store, downloads: Downloads, oci: Fetcher
) -> RegistryAPI:
    """/v2: the cache, the mirror's fills with --mirror, pushes with --allow-push."""
    pool = ThreadPool(minthreads=0, maxthreads=32, name="sendfile")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    catalog = Catalog(store, upstream=config.upstream)
    mirror = None
    if config.mirror:
        assert isinstance(oci, OciFetcher)
        creds = {
            host: Credentials(base64.b64encode(secret.encode()).decode(), "Basic")
            if ":" in secret
            else Credentials(secret, "Bearer")
            for host, secret in config.registry_credentials.items()
        }
        mirror = Mirror(
            downloads,
            oci,
            catalog,
            config.upstream,
            config.allow_upstream,
            ttl=config.manifest_ttl,
            credentials=creds,
        )
        log.info(
            "mirror mode: filling from %s",
            ", ".join(sorted(mirror.allowed)) or "no registry (set --upstream)",
        )
    # Where /v2 finds a blob, in order: the cache, then (--mirror) the upstream fill.
    sources: list[BlobSource] = [LocalBlobs(store.layout, catalog)]
    if mirror is not None:
        sources.append(MirrorBlobs(mirror, store.layout, reactor))
    sender = BlobSender(reactor, reactor, pool)
    registry = RegistryAPI(store.layout, catalog, sender, Chain(sources), mirror)
    if config.allow_push:
        registry.push = PushAPI(
            store,
            Uploads(store, reactor),
            reactor,
            after_push=downloads.evict_soon if config.max_cache_size is not None else None,
        )
        log.info("push enabled on /v2%s", " (with the API token)" if config.api_token else "")
    return registry


def _cluster(
    config: Config,
    reactor: Any,
    store: Store,
    downloads: Downloads,
    registry: RegistryAPI,
    origin_client: HttpClient,
) -> PeerAPI | None:
    """With --peers: this node's membership of the cache array, the peer
    routes, blobs of known digest asked of their owner first, and the copy of
    entries from peers when the origin is out of reach."""
    if not config.peers:
        return None
    listener = config.tls_address if config.peer_tls else config.address
    self_address = config.advertise_address or str(listener)

    def resolve(name: str, port: int) -> Deferred[list[str]]:
        return in_thread(reactor, _addresses_of, name, port)

    membership = Membership(
        reactor, config.peers, self_address, resolve, loopback_only=not config.peer_tls
    )
    membership.start()
    reactor.addSystemEventTrigger("before", "shutdown", membership.stop)
    trust = None
    if config.peer_tls:
        assert config.tls_ca is not None
        trust = ssl.Certificate.loadPEM(config.tls_ca.read_bytes())
    scheme = "https" if config.peer_tls else "http"
    # Peers, not origins: --allow-upstream is for what they fetch.
    client = HttpClient(
        reactor,
        ReachPolicy(),
        TransferOptions(idle_timeout=config.idle_timeout, attempts=2, backoff=0.2),
        trust=trust,
    )
    downloads.peer_pull = PeerPull(membership, client, store, config.cluster_token, scheme)
    # A blob's stream from its owner: a dead or silent peer is left within seconds.
    streams = HttpClient(
        reactor,
        ReachPolicy(),
        TransferOptions(
            idle_timeout=min(config.idle_timeout, PEER_IDLE_TIMEOUT),
            connect_timeout=PEER_CONNECT_TIMEOUT,
            attempts=1,
        ),
        trust=trust,
    )
    origin_client.route = PeerRoute(membership, streams, config.cluster_token, scheme)
    local = LocalBlobs(store.layout, registry.catalog)

    def start_fill(digest: Digest, origin: Origin) -> Download:
        request = FetchRequest(fill_url(digest))
        fill = OriginFill(origin_client, store.layout, digest, origin)
        return downloads.start(request, fill, queued=False)

    blobs = PeerBlobs(downloads.writers, local, start_fill, reactor)
    fanout = Fanout(config.peer_fanout, lambda a: a in membership.addresses())
    answers = RegistryAPI(store.layout, registry.catalog, registry.sender, local)
    log.info(
        "cache array: this node is %s; peers %s; fan-out %d",
        self_address,
        ", ".join(str(p) for p in config.peers),
        config.peer_fanout,
    )
    return PeerAPI(store, answers, membership, reactor, blobs, fanout, scheme)


def _addresses_of(name: str, port: int) -> list[str]:
    """Every address a name resolves to (blocking; in a thread)."""
    try:
        answers = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UpstreamUnreachable(f"cannot resolve {name}: {e}") from None
    return sorted({str(a[4][0]) for a in answers})


def _wire(site: LoggingSite, root: Root, layout: Layout) -> LoggingSite:
    site.resource = root
    # Bodies are admitted (or refused) from the request head, before they are read.
    site.admission = root.access
    site.spool_dir = str(layout.ingest_dir)
    site.display_path = display_path
    return site


def listen_tcp(addr: Address, site: LoggingSite, reactor: Any) -> Any:
    """Listen on a TCP address (``localhost``: 127.0.0.1; no host: every
    interface, IPv6 and IPv4 where it can); return the listening port."""
    host = "127.0.0.1" if addr.host == "localhost" else addr.host
    try:
        return reactor.listenTCP(addr.port, site, interface=host or "::")
    except CannotListenError as e:
        if host:
            why = e.socketError.strerror if isinstance(e.socketError, OSError) else e.socketError
            raise StartupError(f"cannot listen on {addr}: {why}") from None
        return listen_tcp(Address("0.0.0.0", addr.port), site, reactor)


def listen(server: Server, reactor: Any, port: Any = None) -> Any:
    """Start listening (unless ``port`` already does); write the address into
    the cache's lock file; return the listening port."""
    addr = server.config.address
    if port is not None:
        _announce_tcp(server, port)
        return port
    if addr.unix_path is not None:
        path = addr.unix_path
        if path.exists() and not stat.S_ISSOCK(path.stat().st_mode):
            raise StartupError(f"{path} exists and is not a socket")
        if path.is_socket():
            # A socket left by a process that is gone (we hold the cache lock,
            # so no other server of this cache is using it).
            path.unlink()
        old = os.umask(0o117)
        try:
            port = reactor.listenUNIX(str(path), server.site, mode=0o660)
        finally:
            os.umask(old)
        log.info("listening on unix:%s", path)
        Layout.announce(server.lock_fd, f"unix:{path.absolute()}")
        return port
    port = listen_tcp(addr, server.site, reactor)
    _announce_tcp(server, port)
    return port


def listen_tls(server: Server, reactor: Any) -> Any:
    """The second listener (--tls-address): the same API over HTTPS, for
    peers and remote clients; None without --tls-cert."""
    config = server.config
    addr = config.tls_address
    if addr is None or config.tls_cert is None or config.tls_key is None:
        return None
    try:
        pem = config.tls_cert.read_bytes() + b"\n" + config.tls_key.read_bytes()
        certificate = ssl.PrivateCertificate.loadPEM(pem)
    except Exception as e:  # unreadable, not PEM, a key that does not match
        raise StartupError(f"cannot use --tls-cert/--tls-key: {e}") from None
    host = "127.0.0.1" if addr.host == "localhost" else addr.host
    try:
        port = reactor.listenSSL(
            addr.port, server.site, certificate.options(), interface=host or "::"
        )
    except CannotListenError as e:
        raise StartupError(f"cannot listen on {addr}: {e.socketError}") from None
    bound = port.getHost()
    shown = f"[{bound.host}]" if ":" in bound.host else bound.host
    log.info("listening on https://%s:%d", shown, bound.port)
    return port


def start_readers(server: Server, reactor: Any, port: Any, argv: list[str]) -> Any:
    """With --workers above 1: the reader processes beside this writer
    (:mod:`proxy.workers`), sharing ``port``; None with one worker."""
    if server.config.workers <= 1:
        return None
    from proxy.workers.supervisor import Readers

    readers = Readers(reactor, server.config.workers - 1, port, server.site, server.store, argv)
    readers.start()
    if server.admin is not None:
        server.admin.workers = readers.info
    return readers


def _announce_tcp(server: Server, port: Any) -> None:
    bound = port.getHost()
    if server.config.api_token is None and not is_loopback_host(bound.host):
        log.warning(
            "listening on %s without --api-token: anyone who can reach it can make this "
            "node download and delete content",
            bound.host,
        )
    shown = f"[{bound.host}]" if ":" in bound.host else bound.host
    Layout.announce(server.lock_fd, f"{shown}:{bound.port}")
    log.info("listening on http://%s:%d", shown, bound.port)
