"""Run the real storage-manager server as a subprocess for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

_LISTEN_RE = re.compile(r'listening on (http://[^\s"]+|unix:[^\s"]+)')


class ServerProcess:
    """``python -m proxy`` on a loopback port (or a Unix socket)."""

    def __init__(
        self,
        cache_dir: Path,
        *args: str,
        address: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.args = args
        self.address = address
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.base_url = ""
        self.unix_path: str | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CACHE_DIR", "NEKKO_ADDRESS", "VERBOSE")
        }
        env.update(self.env)
        self.lines = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "--cache-dir",
                str(self.cache_dir),
                "--address",
                self.address,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = _LISTEN_RE.search(line)
                if m and not found.is_set():
                    where = m.group(1)
                    if where.startswith("unix:"):
                        self.unix_path = where[len("unix:") :]
                        self.base_url = "http://storage-manager"
                    else:
                        self.base_url = where
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + self.log())
        return self

    def client(self, **kw: Any) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.unix_path) if self.unix_path else None
        return httpx.Client(base_url=self.base_url, transport=transport, timeout=60, **kw)

    def log(self) -> str:
        time.sleep(0.05)
        return "\n".join(self.lines)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


REPOSITORY = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m proxy`` to completion (for flag and error tests); with
    ``cwd``, from that directory (relative paths are then the user's), still
    this repository's code."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("CACHE_DIR", "NEKKO_ADDRESS", "VERBOSE")
    }
    if cwd is not None:
        full_env["PYTHONPATH"] = str(REPOSITORY)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
