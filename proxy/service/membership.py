"""Who the peers of this node are, which of them are live, and which one owns
a digest.

Membership is a static list (``--peers 10.0.0.7:8050,10.0.0.8:8050``) or a
DNS name whose every A/AAAA answer is a peer (``--peers dns:<name>:<port>``,
what a Kubernetes headless Service gives: one answer per DaemonSet pod),
re-resolved every :data:`REFRESH` seconds. No consensus and no gossip: each
node decides on its own, from what it resolves and what its requests see.

Liveness: a peer is presumed live from the start and until a request to it
fails; a failed peer is tried again :data:`RETRY_AFTER` seconds later.

Ownership is rendezvous (highest random weight) hashing, as in Squid's CARP
and groupcache: among the live peers (this node included), the owner of a
digest is the one with the largest ``sha256("<address>|<digest>")`` in hex,
compared as a string, the address spelled as in ``--peers`` or
``--advertise-address``. Every node of any version computes it the same way,
and when a peer comes or goes only the digests it owned move.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

log = logging.getLogger(__name__)

REFRESH = 30.0  # seconds between two resolutions of a dns: peer name
RETRY_AFTER = 10.0  # seconds a failed peer is left alone


class PeerSpecError(ValueError):
    """A ``--peers`` entry that is neither ``host:port`` nor ``dns:<name>:<port>``."""


@attrs.frozen
class PeerSpec:
    """One ``--peers`` entry: a peer (``host:port``), or a DNS name whose
    answers are peers on ``port``."""

    host: str
    port: int
    dns: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"dns:{self.host}:{self.port}" if self.dns else self.address


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not _is_ip(host)):
        raise PeerSpecError(f"{text!r}: expected host:port ([v6]:port for IPv6)")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerSpecError(f"{text!r}: the port must be a number from 1 to 65535")
    return host.lower(), int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_peers(text: str) -> tuple[PeerSpec, ...]:
    """``--peers``: comma-separated ``host:port`` or ``dns:<name>:<port>``."""
    specs = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if item.startswith("dns:"):
            host, port = _host_port(item[len("dns:") :])
            specs.append(PeerSpec(host, port, dns=True))
        else:
            specs.append(PeerSpec(*_host_port(item)))
    return tuple(specs)


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` peer address is on this machine's loopback."""
    return is_loopback_host(address.rpartition(":")[0])


def is_loopback_host(host: str) -> bool:
    """Whether a host (a name, an IP, a bracketed IPv6) is this machine's loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def weight(address: str, digest: str) -> str:
    """The rendezvous weight of ``address`` for ``digest`` (hex, compared as text)."""
    return hashlib.sha256(f"{address}|{digest}".encode()).hexdigest()


def rendezvous(digest: str, addresses: Iterable[str]) -> list[str]:
    """``addresses`` in rendezvous order for ``digest``: the owner first."""
    return sorted(set(addresses), key=lambda a: weight(a, digest), reverse=True)


def owner(digest: str, addresses: Iterable[str]) -> str:
    """The owner of ``digest`` among ``addresses`` (highest random weight)."""
    return rendezvous(digest, addresses)[0]


Resolver = Callable[[str, int], Deferred[list[str]]]  # (name, port) -> IP addresses


@attrs.define
class PeerState:
    """What this node knows of one peer."""

    address: str
    source: str  # the --peers entry it came from
    down_until: float = 0.0  # clock time before which it is not asked
    failures: int = 0
    last_error: str | None = None

    def live(self, now: float) -> bool:
        return now >= self.down_until

    def to_json(self, now: float) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "address": self.address,
            "state": "up" if self.live(now) else "down",
            "from": self.source,
            "failures": self.failures,
        }
        if self.last_error is not None:
            doc["lastError"] = self.last_error
        if not self.live(now):
            doc["retryIn"] = round(self.down_until - now, 1)
        return doc


class Membership:
    """The peers of this node (``self_address`` is left out of them)."""

    def __init__(
        self,
        clock: IReactorTime,
        specs: Sequence[PeerSpec],
        self_address: str,
        resolve: Resolver | None = None,
        loopback_only: bool = True,
    ) -> None:
        self._clock = clock
        self._loopback_only = loopback_only  # no TLS between nodes: plain HTTP stays local
        self.self_address = self_address
        self._specs = tuple(specs)
        self._resolve = resolve
        self._peers: dict[str, PeerState] = {}
        self._refresher: LoopingCall | None = None
        self._set_static()

    @property
    def enabled(self) -> bool:
        return bool(self._specs)

    def _set_static(self) -> None:
        for spec in self._specs:
            if not spec.dns and spec.address != self.self_address:
                self._peers.setdefault(spec.address, PeerState(spec.address, str(spec)))

    def start(self) -> None:
        """Resolve the dns: entries now and every REFRESH seconds."""
        if self._resolve is None or not any(s.dns for s in self._specs):
            return
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = self._clock
        self._refresher.start(REFRESH, now=True)

    def stop(self) -> None:
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()

    async def _resolve_all(self) -> None:
        assert self._resolve is not None
        found: dict[str, str] = {}
        for spec in (s for s in self._specs if s.dns):
            try:
                ips = await self._resolve(spec.host, spec.port)
            except Exception as e:  # a name that does not resolve now: keep what we had
                log.warning("peers: cannot resolve %s: %s", spec, e)
                found.update({a: p.source for a, p in self._peers.items() if p.source == str(spec)})
                continue
            for ip in ips:
                address = PeerSpec(ip, spec.port).address
                if self._loopback_only and not is_loopback(address):
                    # Plain HTTP between peers only on loopback (no TLS between nodes here).
                    log.warning("peers: %s answered %s, not on loopback: left out", spec, ip)
                elif address != self.self_address:
                    found[address] = str(spec)
        dns_sources = {str(s) for s in self._specs if s.dns}
        for address in [a for a, p in self._peers.items() if p.source in dns_sources]:
            if address not in found:
                del self._peers[address]
        for address, source in found.items():
            self._peers.setdefault(address, PeerState(address, source))

    def refresh(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._resolve_all())

    # -- what requests see ------------------------------------------------------

    def addresses(self) -> list[str]:
        """Every known peer, live or not (this node left out)."""
        return sorted(self._peers)

    def live(self) -> list[str]:
        """The live peers and this node: who owns what is decided among them."""
        now = self._clock.seconds()
        return [self.self_address, *(a for a, p in self._peers.items() if p.live(now))]

    def order(self, key: str) -> list[str]:
        """The live peers (this node left out) in rendezvous order for ``key``."""
        return [a for a in rendezvous(key, self.live()) if a != self.self_address]

    def owner(self, key: str) -> str:
        return owner(key, self.live())

    def failed(self, address: str, error: str) -> None:
        """A request to ``address`` failed: leave it alone for RETRY_AFTER seconds."""
        peer = self._peers.get(address)
        if peer is None:
            return
        if peer.live(self._clock.seconds()):
            log.warning("peer %s is down (%s); retried in %.0f s", address, error, RETRY_AFTER)
        peer.down_until = self._clock.seconds() + RETRY_AFTER
        peer.failures += 1
        peer.last_error = error

    def answered(self, address: str) -> None:
        peer = self._peers.get(address)
        if peer is not None:
            peer.down_until = 0.0
            peer.last_error = None

    def to_json(self) -> dict[str, Any]:
        now = self._clock.seconds()
        return {
            "self": self.self_address,
            "peers": [self._peers[a].to_json(now) for a in sorted(self._peers)],
        }
