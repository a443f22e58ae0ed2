"""Where outbound connections may go.

Every connection the fetchers open goes through :class:`GuardedEndpointFactory`:
the host is resolved first, every address is checked against the policy,
and only then is a connection made -- to the checked address itself, so a
DNS answer cannot change between the check and the connect. Because the
check sits at connect time, every redirect hop is checked the same way.

Refused always: link-local and cloud metadata addresses (169.254.0.0/16,
fe80::/10; AWS's IPv6 metadata address fd00:ec2::254 and Alibaba Cloud's
100.100.100.200), the unspecified address and multicast -- also as an IPv4
address carried inside an IPv6 one (:func:`embedded_ipv4`: IPv4-mapped and
-compatible, NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48 at every
RFC 6052 prefix length, 6to4 2002::/16, Teredo 2001::/32 server and client),
since a translator or relay on the path delivers those to the IPv4 address.
When ``allow_hosts`` is set, only those hosts are reached -- loopback too
only when listed. An entry is a host (any port) or ``host:port`` (``[v6]:port``);
``*.example.com`` (also with a port) is a suffix match: every name below
``example.com`` at any depth, not ``example.com`` itself (the name the entry
writes is not below itself; list both for both); any other ``*`` is refused
at startup (:func:`check_allow_entry`), never silently unmatched.

Through a forward proxy (:mod:`proxy.fetch.proxyenv`) the rules apply to the
final target, never to the proxy: the URL's host is checked against
``allow_hosts`` and, when it is an address or a name this node can resolve,
its addresses against the refused ones. A name the node cannot resolve goes
to the proxy as it is (in many networks only the proxy resolves outside
names); the proxy resolves it then.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import attrs
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from proxy.errors import TargetDenied, UpstreamUnreachable

_DENIED_NETS = [
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("0.0.0.0/32"),
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("224.0.0.0/4"),
    ipaddress.ip_network("ff00::/8"),
]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# RFC 6052 section 2.2: where the 32 bits of IPv4 sit for each prefix length;
# bits 64-71 (the "u" octet) are skipped.
_RFC6052_PREFIXES = (32, 40, 48, 56, 64, 96)


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix: int) -> ipaddress.IPv4Address:
    octets = ip.packed
    if prefix == 96:
        v4 = octets[12:16]
    else:
        start = prefix // 8
        v4 = (octets[start:8] + octets[9:])[:4]
    return ipaddress.IPv4Address(v4)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address may reach through a translator or
    a tunnel: IPv4-mapped and -compatible, NAT64 (RFC 6052: the well-known
    prefix, and the local-use prefix at each prefix length it allows), 6to4
    (RFC 3056), Teredo (RFC 4380: the server and the obfuscated client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # ::a.b.c.d, not :: or ::1
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _NAT64_WELL_KNOWN:
        found.append(_rfc6052_ipv4(ip, 96))
    if ip in _NAT64_LOCAL:
        found.extend(_rfc6052_ipv4(ip, p) for p in _RFC6052_PREFIXES if p >= 48)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    ip = _as_ip(host)
    return ip is not None and ip.is_loopback


@attrs.frozen
class ReachPolicy:
    """Which hosts and addresses downloads may reach."""

    allow_hosts: frozenset[str] = frozenset()

    def check_host(self, host: str, port: int | None = None) -> None:
        """Check a host name or literal before resolving it. Without ``port``
        (an early check of a URL) an allowed ``host:port`` entry is enough;
        the check at connect time has the port."""
        ip = _as_ip(host)
        if ip is not None:
            self.check_address(ip, host)
        if self.allow_hosts and not self._listed(host.lower().strip("[]"), port):
            raise TargetDenied(f"host {host!r} is not in --allow-upstream")

    def _listed(self, host: str, port: int | None) -> bool:
        return any(entry_matches(entry, host, port) for entry in self.allow_hosts)

    def check_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> None:
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            # 0.0.0.0 read at a prefix length the address does not use is noise.
            candidates.extend(v4 for v4 in embedded_ipv4(ip) if not v4.is_unspecified)
        for candidate in candidates:
            if any(candidate in net for net in _DENIED_NETS):
                raise TargetDenied(
                    f"refusing to connect to {host!r} ({candidate}): link-local/metadata address"
                )


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 literal."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if port.isdigit() else None


def entry_matches(entry: str, host: str, port: int | None) -> bool:
    """Whether ``--allow-upstream`` ``entry`` covers ``host`` (lowercase, no
    brackets) on ``port`` (None: any port of the entry will do)."""
    e_host, e_port = _split_entry(entry)
    if e_port is not None and port is not None and e_port != port:
        return False
    host = host.rstrip(".")
    if e_host.startswith("*."):
        return host.endswith(e_host[1:]) and len(host) > len(e_host) - 1
    return e_host == host


def check_allow_entry(entry: str) -> str | None:
    """Why ``entry`` cannot be an ``--allow-upstream`` entry, or None if it can."""
    e_host, e_port = _split_entry(entry)
    if "/" in entry:
        return f"{entry!r}: a host or host:port, not a URL"
    if not e_host:
        return f"{entry!r}: no host"
    if e_port is None and entry.count(":") == 1 and not entry.startswith("["):
        return f"{entry!r}: the port must be a number"
    if "*" in e_host:
        rest = e_host[2:] if e_host.startswith("*.") else ""
        if not rest or "*" in rest or rest.startswith(".") or _as_ip(rest) is not None:
            return (
                f"{entry!r}: a wildcard is only a leading '*.' before a domain "
                "(*.example.com matches a.example.com, not example.com)"
            )
    return None


async def checked_addresses(
    policy: ReachPolicy, host: str, port: int, *, through_proxy: bool = False
) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses of ``host`` once the policy allows it (raises
    :class:`TargetDenied` otherwise). ``through_proxy``: a name that does not
    resolve here is no error, the proxy resolves it (then no addresses)."""
    policy.check_host(host, port)
    ip = _as_ip(host)
    if ip is not None:
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    try:
        addrs = await deferToThread(_resolve, host, port)
    except UpstreamUnreachable:
        if through_proxy:
            return []
        raise
    for _family, addr in addrs:
        policy.check_address(ipaddress.ip_address(addr), host)
    return addrs


def _resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UpstreamUnreachable(f"cannot resolve {host!r}: {e.strerror}") from None
    out: list[tuple[socket.AddressFamily, str]] = []
    for family, _t, _p, _c, sockaddr in infos:
        addr = (family, str(sockaddr[0]))
        if addr not in out:
            out.append(addr)
    return out


@implementer(IStreamClientEndpoint)
@attrs.define
class GuardedEndpoint:
    reactor: Any
    policy: ReachPolicy
    scheme: bytes
    host: str
    port: int
    connect_timeout: float
    trust: Any = None  # a CA to verify https against (None: the platform's)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addrs = await checked_addresses(self.policy, self.host, self.port)
        last: Exception | None = None
        for family, addr in addrs:
            ep: IStreamClientEndpoint
            if family == socket.AF_INET6:
                ep = endpoints.TCP6ClientEndpoint(
                    self.reactor, addr, self.port, timeout=self.connect_timeout
                )
            else:
                ep = endpoints.TCP4ClientEndpoint(
                    self.reactor, addr, self.port, timeout=self.connect_timeout
                )
            if self.scheme == b"https":
                options = (
                    optionsForClientTLS(self.host)
                    if self.trust is None
                    else optionsForClientTLS(self.host, trustRoot=self.trust)
                )
                ep = endpoints.wrapClientTLS(options, ep)
            try:
                proto: IProtocol = await ep.connect(factory)
                return proto
            except Exception as e:  # try the next address
                last = e
        raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port}: {last}")


@implementer(IAgentEndpointFactory)
@attrs.define
class GuardedEndpointFactory:
    reactor: Any
    policy: ReachPolicy
    connect_timeout: float = 30.0
    trust: Any = None  # a CA to verify https against (None: the platform's)

    def endpointForURI(self, uri: URI) -> GuardedEndpoint:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else str(uri.host)
        return GuardedEndpoint(
            self.reactor,
            self.policy,
            uri.scheme,
            host.strip("[]"),
            uri.port,
            self.connect_timeout,
            self.trust,
        )
