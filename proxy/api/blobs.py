"""Sending blob bytes: a pull producer over an open file descriptor.

The transport asks for more only when its buffer has drained, so a slow
client never makes the server read ahead; at most :data:`CHUNK` bytes of a
blob are in memory per connection. The file stays open until the answer is
done, so a blob removed meanwhile (``unlink``) is still sent whole.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

CHUNK = 256 * 1024


@implementer(IPullProducer)
class FileRangeProducer:
    """Writes ``length`` bytes of ``fd`` from ``offset`` to a request, then finishes it."""

    def __init__(self, request: Any, fd: int, offset: int, length: int) -> None:
        self._request = request
        self._fd: int | None = fd
        self._offset = offset
        self._remaining = length
        request.notifyFinish().addBoth(lambda _: self._close())

    def start(self) -> None:
        if self._remaining == 0:
            self._close()
            self._request.finish()
            return
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._fd is None:
            return
        data = os.pread(self._fd, min(CHUNK, self._remaining), self._offset)
        if not data:
            # The file is shorter than it was: never let a short body pass as complete.
            self._close()
            self._request.unregisterProducer()
            self._request.channel.transport.abortConnection()
            return
        self._offset += len(data)
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining == 0:
            self._close()
            self._request.unregisterProducer()
            self._request.finish()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
