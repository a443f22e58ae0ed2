"""A reactor for in-process tests: a :class:`twisted.internet.task.Clock`
for time, and a thread pool that runs nothing until the test says so
(:meth:`FakeReactor.run_threads`), so every step is the test's to take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer


class ManualPool:
    """Work handed to "threads", run when the test runs it (on its own thread)."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[bool, Any], None], Callable[..., Any], Any, Any]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        self.queue.append((on_result, f, a, kw))


@implementer(IReactorThreads)
class FakeReactor(Clock):
    """Clock + a manual thread pool; calls "from a thread" run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ManualPool()

    def getThreadPool(self) -> ManualPool:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)

    def callInThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        self.pool.callInThreadWithCallback(lambda ok, r: None, f, *a, **kw)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass

    def run_threads(self) -> int:
        """Run the queued thread work (and the work it queues) to the end."""
        ran = 0
        while self.pool.queue:
            on_result, f, a, kw = self.pool.queue.pop(0)
            try:
                result = f(*a, **kw)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)
            ran += 1
        return ran
