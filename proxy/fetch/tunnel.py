"""A TCP tunnel through a forward proxy: ``CONNECT host:port`` (RFC 9110 9.3.6).

:class:`ConnectTunnelEndpoint` connects to the proxy, asks it for a tunnel to
the origin (with ``Proxy-Authorization`` when the proxy URL has credentials:
they go to the proxy only, in this request, never through the tunnel), waits
for a 2xx and then hands the connection to the protocol it was asked to
connect. Wrapped with :func:`twisted.internet.endpoints.wrapClientTLS` that
protocol is TLS with the origin, verified against the origin's name: the
proxy sees only encrypted bytes.

A refusal is an error that names the proxy (redacted) and its answer; a 407
(or the 401 some proxies send instead) says to check the proxy's credentials.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from proxy.errors import StorageError, UpstreamError, UpstreamUnreachable
from proxy.fetch.proxyenv import ProxyServer

MAX_ANSWER = 16 * 1024  # bytes of status line and headers a proxy may send


def proxy_refused(proxy: ProxyServer, what: str, status: int, phrase: str) -> StorageError:
    """The error for a proxy's non-2xx answer to ``what``."""
    msg = f"proxy {proxy.redacted()} answered {status} {phrase} to {what}"
    if status in (401, 407):  # tinyproxy answers wrong credentials with 401
        hint = "check the credentials in the proxy URL" if proxy.username else "it needs"
        if not proxy.username:
            hint += " credentials: http://user:password@host:port in HTTPS_PROXY/HTTP_PROXY"
        return UpstreamError(f"{msg} ({hint})", 407)
    return UpstreamUnreachable(msg)


class _Connect(Protocol):
    """Sends CONNECT, reads the answer, then relays to the tunnelled protocol."""

    def __init__(self, endpoint: ConnectTunnelEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.tunnelled = factory
        self.ready: Deferred[IProtocol] = Deferred(lambda _d: self._abort())
        self.inner: IProtocol | None = None
        self._buffer = b""

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        authority = self.endpoint.authority().encode("idna")
        lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        credentials = self.endpoint.proxy.authorization()
        if credentials is not None:
            lines.append(b"Proxy-Authorization: " + credentials)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buffer) > MAX_ANSWER:
                self._fail(UpstreamUnreachable(f"{self._who()}: answer to CONNECT too long"))
            return
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest_line = status_line.partition(" ")
        code, _, phrase = rest_line.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            self._fail(UpstreamUnreachable(f"{self._who()}: not an HTTP answer to CONNECT"))
            return
        if not 200 <= int(code) < 300:
            what = f"CONNECT {self.endpoint.authority()}"
            self._fail(proxy_refused(self.endpoint.proxy, what, int(code), phrase))
            return
        self._buffer = b""
        transport = self.transport
        assert transport is not None
        inner = self.tunnelled.buildProtocol(transport.getPeer())
        if inner is None:
            self._fail(UpstreamUnreachable(f"{self._who()}: no protocol for the tunnel"))
            return
        self.inner = inner
        inner.makeConnection(transport)
        if rest:
            inner.dataReceived(rest)
        self.ready.callback(inner)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(
                UpstreamUnreachable(f"{self._who()} closed the connection before answering CONNECT")
            )

    def _fail(self, error: StorageError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self._abort()

    def _who(self) -> str:
        return f"proxy {self.endpoint.proxy.redacted()}"


@implementer(IStreamClientEndpoint)
@attrs.define
class ConnectTunnelEndpoint:
    """Connects a protocol to ``host:port`` through ``proxy``'s CONNECT tunnel."""

    reactor: Any
    proxy: ProxyServer
    host: str
    port: int
    connect_timeout: float = 30.0

    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        to_proxy = endpoints.HostnameEndpoint(
            self.reactor, self.proxy.host, self.proxy.port, timeout=self.connect_timeout
        )
        connect = _Connect(self, factory)
        try:
            await to_proxy.connect(Factory.forProtocol(lambda: connect))
        except CancelledError:
            raise
        except Exception as e:
            raise UpstreamUnreachable(
                f"cannot connect to proxy {self.proxy.redacted()}: {e}"
            ) from None
        return await connect.ready
