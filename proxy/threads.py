"""Blocking work off the reactor: the one helper that runs a function in the
reactor's thread pool (disk I/O, hashing) and fires a Deferred with its result
on the reactor. The reactor is passed in, so tests can hand a fake one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")


def in_thread(reactor: IReactorThreads, f: Callable[..., T], *args: Any) -> Deferred[T]:
    """``f(*args)`` in ``reactor``'s thread pool; its result on the reactor."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
