"""A real forward proxy for tests: Debian's ``tinyproxy`` on a loopback port.

Started in the foreground with a generated configuration (loopback only,
optional Basic auth, CONNECT allowed to the ports given), its log in the
test's directory::

    with TinyProxy(tmp_path / "proxy", connect_ports=[443]) as proxy:
        env = {"HTTPS_PROXY": proxy.url}
        ...
        assert "CONNECT" in proxy.log()

Forwarded plain requests carry ``Via: 1.1 <proxy.via_name> (tinyproxy/...)``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.processes import stop_process

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TinyProxy:
    def __init__(
        self,
        directory: Path,
        *,
        connect_ports: Iterable[int] = (),
        user: str | None = None,
        password: str | None = None,
        via_name: str = "test-forward-proxy",
    ) -> None:
        self.directory = directory
        self.connect_ports = list(connect_ports)
        self.user = user
        self.password = password
        self.via_name = via_name
        self.port = 0
        self.log_path = directory / "tinyproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """``http://[user:password@]127.0.0.1:port`` (no credentials unless given)."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> TinyProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            f'PidFile "{self.directory / "tinyproxy.pid"}"',
            "MaxClients 20",
            "Allow 127.0.0.1",
            f'ViaProxyName "{self.via_name}"',
        ]
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        conf = self.directory / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tinyproxy did not listen on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
