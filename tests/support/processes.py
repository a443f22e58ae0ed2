"""Starting and stopping the helper processes tests start (registries,
daemons, emulators, servers)."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; return the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


# "METHOD /target HTTP/1.1" STATUS, as werkzeug, gcp-storage-emulator and Azurite log it.
ACCESS_LINE_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def start_listening(
    name: str,
    argv: Sequence[str],
    port: int,
    lines: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen[str]:
    """Start a server process whose output (stdout and stderr) is appended to
    ``lines``; return once it accepts connections on 127.0.0.1:``port``."""
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{name} did not start:\n" + "\n".join(lines))
        time.sleep(0.1)


def access_requests(lines: list[str]) -> list[tuple[str, str, int]]:
    """(method, target, status) of every access-log line in ``lines``."""
    out = []
    for line in list(lines):
        m = ACCESS_LINE_RE.search(line)
        if m:
            out.append((m["method"], m["target"], int(m["status"])))
    return out
