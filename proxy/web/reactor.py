"""The reactor the server runs on: Twisted's epoll reactor, each I/O event
handled without a log context around it.

Twisted's ``EPollReactor.doPoll`` calls every ready descriptor through
``log.callWithLogger``, which asks the descriptor for its log prefix and
pushes a context dictionary for the call (for the ``system`` field of the
legacy log). This server logs through :mod:`logging` and never reads that
field, and at tens of thousands of small answers a second the wrapping was a
twelfth of a blob ``HEAD``'s time on the reactor. :class:`EPollReactor` does
what the original does without it, and still logs, rather than lets out, an
exception the handling of an event raises (``log.err``, as the original).

Installed by :func:`install` before anything imports
``twisted.internet.reactor``; where epoll is missing (another OS), Twisted's
default reactor is used as before.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.python import log

try:
    from twisted.internet import epollreactor
except ImportError:  # pragma: no cover - not Linux
    epollreactor = None  # type: ignore[assignment]


if epollreactor is not None:

    class EPollReactor(epollreactor.EPollReactor):
        """``EPollReactor`` with a plain loop over the ready descriptors."""

        def doPoll(self, timeout: float | None) -> None:
            wait = -1 if timeout is None else timeout
            try:
                ready = self._poller.poll(wait, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            handle: Any = self._doReadOrWrite
            for fd, event in ready:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    handle(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err()

        doIteration = doPoll


def install() -> Any:
    """Install the reactor of this module (once per process; a no-op when a
    reactor is already installed or epoll is missing); the reactor."""
    import sys

    if "twisted.internet.reactor" not in sys.modules and epollreactor is not None:
        from twisted.internet.main import installReactor

        installReactor(EPollReactor())  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    return reactor
