"""The HTTP/1.1 connection of the server, quick to refuse a TLS handshake.

Registry clients (skopeo, containerd, Go's net/http) try HTTPS first. A plain
HTTP server that waits for a request line while the client waits for a
ServerHello costs each of them a 10 s handshake timeout before falling back
to HTTP. Like Go's own server, answer a TLS ClientHello with a plain-text 400
at once, so the client falls back immediately.
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel

_TLS_HANDSHAKE = 0x16
_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"Client sent an HTTPS request to an HTTP server.\n"
)


class PlainHTTPChannel(HTTPChannel):
    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data[0] == _TLS_HANDSHAKE:
                assert self.transport is not None
                self.transport.write(_ANSWER)
                self.transport.loseConnection()
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]
