"""How a request leaves the node: directly, or through the environment's forward proxy.

:class:`OutboundAgent` is the one ``IAgent`` the fetchers use (through
:class:`proxy.fetch.transfer.HttpClient`). Per request it asks
:class:`~proxy.fetch.proxyenv.ProxyConfig` for a proxy:

* none: :class:`~proxy.fetch.reach.GuardedEndpoint`, as always;
* ``https://`` through a proxy: a ``CONNECT`` tunnel
  (:mod:`proxy.fetch.tunnel`) and TLS with the origin inside it;
* ``http://`` through a proxy: the request in absolute form to the proxy
  (Twisted's ``ProxyAgent``) with ``Proxy-Authorization`` added for the proxy.

Either way the reach rules are checked against the origin first
(:func:`~proxy.fetch.reach.checked_addresses` with ``through_proxy``), and a
proxy's 407 is an error that names the proxy, not the origin.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import URI, Agent, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from proxy.fetch.proxyenv import ProxyConfig, ProxyServer
from proxy.fetch.reach import GuardedEndpointFactory, ReachPolicy, checked_addresses
from proxy.fetch.tunnel import ConnectTunnelEndpoint, proxy_refused
from proxy.redact import redact_url


def _host(uri: URI) -> str:
    host = uri.host.decode("idna") if isinstance(uri.host, bytes) else str(uri.host)
    return host.strip("[]")


@implementer(IStreamClientEndpoint)
class _CheckedFirst:
    """Checks the origin against the reach policy, then connects through ``inner``."""

    def __init__(self, policy: ReachPolicy, host: str, port: int, inner: Any) -> None:
        self.policy, self.host, self.port, self.inner = policy, host, port, inner

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        await checked_addresses(self.policy, self.host, self.port, through_proxy=True)
        proto: IProtocol = await self.inner.connect(factory)
        return proto


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Endpoints for ``Agent``: direct (guarded) or a CONNECT tunnel for proxied https."""

    def __init__(
        self,
        reactor: Any,
        policy: ReachPolicy,
        proxies: ProxyConfig,
        connect_timeout: float,
        trust: Any = None,
    ) -> None:
        self.reactor = reactor
        self.policy = policy
        self.proxies = proxies
        self.connect_timeout = connect_timeout
        self.direct = GuardedEndpointFactory(reactor, policy, connect_timeout, trust)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = _host(uri)
        proxy = self.proxies.proxy_for(uri.scheme.decode(), host, uri.port)
        if proxy is None or uri.scheme != b"https":
            return self.direct.endpointForURI(uri)
        tunnel = ConnectTunnelEndpoint(self.reactor, proxy, host, uri.port, self.connect_timeout)
        tls = endpoints.wrapClientTLS(optionsForClientTLS(host), tunnel)
        return _CheckedFirst(self.policy, host, uri.port, tls)


@implementer(IAgent)
class OutboundAgent:
    """The fetchers' agent: every request checked, proxied where the environment says."""

    def __init__(
        self,
        reactor: Any,
        policy: ReachPolicy,
        proxies: ProxyConfig,
        pool: HTTPConnectionPool,
        connect_timeout: float = 30.0,
        trust: Any = None,
    ) -> None:
        self.reactor = reactor
        self.policy = policy
        self.proxies = proxies
        self.pool = pool
        self.connect_timeout = connect_timeout
        self._agent = Agent.usingEndpointFactory(
            reactor, _Endpoints(reactor, policy, proxies, connect_timeout, trust), pool
        )
        self._plain: dict[ProxyServer, ProxyAgent] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        parsed = URI.fromBytes(uri)
        host = _host(parsed)
        proxy = self.proxies.proxy_for(parsed.scheme.decode(), host, parsed.port)
        if proxy is None or parsed.scheme != b"http":
            direct: Deferred[IResponse] = self._agent.request(method, uri, headers, bodyProducer)
            return direct
        return Deferred.fromCoroutine(
            self._through(proxy, host, parsed.port, method, uri, headers, bodyProducer)
        )

    async def _through(
        self,
        proxy: ProxyServer,
        host: str,
        port: int,
        method: bytes,
        uri: bytes,
        headers: Headers | None,
        body: IBodyProducer | None,
    ) -> IResponse:
        await checked_addresses(self.policy, host, port, through_proxy=True)
        h = headers.copy() if headers is not None else Headers()
        credentials = proxy.authorization()
        if credentials is not None:
            h.setRawHeaders(b"Proxy-Authorization", [credentials])
        agent = self._plain.get(proxy)
        if agent is None:
            to_proxy = endpoints.HostnameEndpoint(
                self.reactor, proxy.host, proxy.port, timeout=self.connect_timeout
            )
            agent = self._plain[proxy] = ProxyAgent(to_proxy, self.reactor, self.pool)
        response: IResponse = await agent.request(method, uri, h, body)
        if response.code == 407:
            response.deliverBody(_Drop())
            phrase = response.phrase.decode("latin-1", "replace")
            raise proxy_refused(proxy, f"{method.decode()} {redact_url(uri.decode())}", 407, phrase)
        return response


class _Drop(Protocol):
    """Reads and forgets a body (the proxy's 407 page)."""
