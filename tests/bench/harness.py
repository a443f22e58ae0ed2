"""Processes and measurements the benchmark is made of: nginx, wrk, curl, RSS sampling.

Everything listens on / connects to 127.0.0.1 only, and every process started here is bounded
by a timeout and stopped by its owner (``Nginx.stop``, ``subprocess.run(timeout=...)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"
NGINX_BINARY = "/usr/sbin/nginx"
WRK_BINARY = "/usr/bin/wrk"
CURL_BINARY = "/usr/bin/curl"

MiB = 1 << 20
GiB = 1 << 30


class MeasurementError(RuntimeError):
    """A server could not be measured (did not start, failed the requests, ...)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def settle_disk() -> float:
    """``sync(2)``: write back what earlier steps left dirty, so that it does not compete with
    the next measurement. Returns the seconds it took."""
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of all CPUs' time spent busy over the next ``seconds`` (/proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


# -- nginx ----------------------------------------------------------------------------------------


class Nginx:
    """nginx (2 workers, ``sendfile on``, no access log) serving ``root`` on a free loopback
    port, in the foreground (``daemon off``) so that it is this process's child.

    Otherwise nginx's defaults, except ``keepalive_requests`` (1000 by default: wrk would
    reconnect every 1000 requests, a cost the other servers do not pay). Not ``tcp_nopush``:
    TCP_CORK halves a single client's throughput on loopback.
    """

    def __init__(self, workdir: Path, root: Path, workers: int = 2) -> None:
        self.workdir = workdir
        self.root = root
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def _config(self) -> str:
        tmp = self.workdir / "tmp"
        # As root, nginx's workers would switch to "nobody", who cannot enter the private
        # temporary directories the files are in.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes {self.workers};
daemon off;
pid {self.workdir / "nginx.pid"};
error_log {self.error_log} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    server {{
        listen {LOOPBACK}:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> Nginx:
        if shutil.which(NGINX_BINARY) is None:
            raise MeasurementError(f"{NGINX_BINARY} is not installed (apt-get install nginx-light)")
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        last = ""
        for _attempt in range(3):
            self.port = free_port()
            conf.write_text(self._config())
            self.proc = subprocess.Popen(
                [NGINX_BINARY, "-p", str(self.workdir), "-e", str(self.error_log), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection((LOOPBACK, self.port), timeout=1):
                        return self
                except OSError:
                    time.sleep(0.05)
            last = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
            self.stop()
            if "Address already in use" not in last:
                break
        raise MeasurementError(f"nginx did not start: {last[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the master stops its workers and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- wrk ------------------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- storage-manager benchmark: one request() per request, a random Range each time.
-- script args: mode ("range", "head" or "get"), blob size, range length, seed
local mode, size, length = "get", 0, 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  mode = args[1] or "get"
  size = tonumber(args[2] or "0")
  length = tonumber(args[3] or "0")
  math.randomseed(tonumber(args[4] or "1") * 1000 + (id or 0))
end

function request()
  if mode == "range" then
    local first = math.random(0, size - length)
    local range = string.format("bytes=%d-%d", first, first + length - 1)
    return wrk.format("GET", wrk.path, {Range = range})
  elseif mode == "head" then
    return wrk.format("HEAD", wrk.path)
  end
  return wrk.format("GET", wrk.path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "latency_mean_us": %.1f, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d, "latency_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclasses.dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_per_s": round(self.rps, 1),
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "bytes": self.bytes,
            "bytes_per_request": round(self.bytes_per_request, 1),
            "MiB_per_s": round(self.bytes / self.duration_s / MiB, 1) if self.duration_s else 0,
            "errors": self.errors,
            "latency_ms": self.latency_ms,
        }


def run_wrk(
    url: str,
    script: Path,
    *,
    mode: str,
    size: int,
    length: int,
    connections: int,
    threads: int,
    duration: float,
    seed: int = 1,
) -> WrkResult:
    """One wrk run; raises ``MeasurementError`` if wrk failed or nothing was answered."""
    cmd = [
        WRK_BINARY,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        mode,
        str(size),
        str(length),
        str(seed),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise MeasurementError(f"wrk did not finish: {' '.join(cmd)}") from e
    m = re.search(r"^BENCH-JSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or m is None:
        raise MeasurementError(f"wrk failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    raw = json.loads(m.group(1))
    result = WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        bytes=int(raw["bytes"]),
        errors={k: int(raw[k]) for k in ("connect", "read", "write", "status", "timeout")},
        latency_ms={
            "mean": round(raw["latency_mean_us"] / 1000, 3),
            "p50": round(raw["latency_p50_us"] / 1000, 3),
            "p99": round(raw["latency_p99_us"] / 1000, 3),
            "max": round(raw["latency_max_us"] / 1000, 3),
        },
        output=proc.stdout[: m.start()].strip(),
    )
    if result.requests == 0:
        raise MeasurementError(f"wrk got no answer from {url}: {proc.stdout}{proc.stderr}")
    return result


# -- curl -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class CurlResult:
    status: int
    size: int
    seconds: float


def curl_args(url: str, out: str, max_time: float) -> list[str]:
    return [
        CURL_BINARY,
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        str(int(max_time)),
        "--output",
        out,
        "--write-out",
        "%{http_code} %{size_download} %{time_total}",
        url,
    ]


def parse_curl(stdout: str) -> CurlResult:
    code, size, total = stdout.split()
    return CurlResult(int(code), int(size), float(total))


def curl_get(url: str, out: str = "/dev/null", max_time: float = 300) -> CurlResult:
    """One ``curl -o OUT URL``, timed by curl itself (``time_total``)."""
    try:
        proc = subprocess.run(
            curl_args(url, out, max_time),
            capture_output=True,
            text=True,
            timeout=max_time + 10,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise MeasurementError(f"curl {url} did not finish") from e
    if proc.returncode != 0:
        raise MeasurementError(f"curl {url} failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_curl(proc.stdout)


# -- resident memory ------------------------------------------------------------------------------


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (storage-manager's writer and its readers)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += [c for c in _children(current) if c not in tree]
    return tree


class RssSampler:
    """Samples ``VmRSS`` of ``pid`` and of every process below it (with ``--workers``: the
    writer and each reader) every ``interval`` seconds in a thread.

    Use ``with RssSampler(pid) as s: s.mark(); <load>``: for each process, samples before
    ``mark`` are its baseline (their median), its peak is its highest sample after it. The
    summary is the process that grew most, with every process beside it.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self._mark: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        pids: list[int] = []
        refreshed = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed > 0.5:  # a reader restarted, or started late
                pids, refreshed = process_tree(self.pid), now
            for pid in pids:
                kib = vm_rss_kib(pid)
                if kib is not None:
                    self.samples.setdefault(pid, []).append((now, kib))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def mark(self, settle: float = 0.5) -> None:
        """Wait ``settle`` seconds of baseline sampling, then start the measured period."""
        time.sleep(settle)
        self._mark = time.monotonic()

    def summary(self) -> dict[str, Any]:
        mark = self._mark if self._mark is not None else 0.0
        processes: list[dict[str, Any]] = []
        for pid, samples in self.samples.items():
            before = [kib for t, kib in samples if t < mark]
            after = [kib for t, kib in samples if t >= mark]
            if not after:
                continue
            baseline = statistics.median(before) if before else after[0]
            peak = max(after)
            processes.append(
                {
                    "pid": pid,
                    "role": "writer" if pid == self.pid else "reader",
                    "baseline_MiB": round(baseline / 1024, 1),
                    "peak_MiB": round(peak / 1024, 1),
                    "growth_MiB": round((peak - baseline) / 1024, 1),
                    "final_MiB": round(after[-1] / 1024, 1),
                    "samples": len(after),
                }
            )
        if not processes:
            raise MeasurementError(f"no memory samples of pid {self.pid}")
        worst = max(processes, key=lambda p: float(p["growth_MiB"]))
        return {**worst, "processes": processes}


# -- the page cache between transfer runs ----------------------------------------------------------

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> bool:
    """``sync``, then ``echo 1 > /proc/sys/vm/drop_caches`` (clean page-cache pages freed)
    where this process may (root, not in a container that forbids it). False if it may not:
    then only the ``sync`` was done."""
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
    except OSError:
        return False
    return True


def read_into_page_cache(path: Path) -> None:
    """Read ``path`` once (into the page cache): a source that nginx then serves from memory,
    as a remote server would serve it from its own."""
    with path.open("rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        while f.readinto(buf):
            pass


# -- storage-manager's log ------------------------------------------------------------------------

_ACCESS = re.compile(r'proxy\.access: \S+ "(\S+) (\S+) [^"]*" (\d{3}) (\d+)')
_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|Unhandled")


def analyse_log(lines: list[str]) -> dict[str, Any]:
    """Status codes per method and the warnings/errors among storage-manager's log lines."""
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    for line in lines:
        m = _ACCESS.search(line)
        if m:
            statuses[f"{m.group(1)} {m.group(3)}"] += 1
        elif _PROBLEM.search(line):
            problems.append(line[:400])
    return {
        "requests": dict(sorted(statuses.items())),
        "problem_lines": len(problems),
        "problems": problems[:10],
    }


# -- machine information --------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def _git_revision(repo: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{rev}{' (proxy/ modified)' if dirty else ''}" if rev else "unknown"


def machine_info(repo: Path) -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_MiB": _mem_total_mib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "storage_manager_revision": _git_revision(repo),
        "tools": {
            "nginx": _first_line([NGINX_BINARY, "-v"]),
            "wrk": _first_line([WRK_BINARY, "-v"]),
            "docker-registry": _first_line(["docker-registry", "--version"]),
            "skopeo": _first_line(["skopeo", "--version"]),
            "curl": _first_line([CURL_BINARY, "--version"]),
            "oras-py": _package_version("oras"),
            "httpx": _package_version("httpx"),
            "twisted": _package_version("twisted"),
        },
    }


# -- the whole run's time limit -------------------------------------------------------------------


class BenchTimeout(BaseException):
    """The benchmark ran past its overall time limit (a BaseException: it is never taken for
    one failed measurement, it ends the run, and the cleanup still stops every process)."""


class Terminated(BaseException):
    """SIGTERM: stop measuring, stop every process started, exit."""


def install_limits(seconds: int) -> None:
    def on_alarm(signum: int, frame: object) -> None:
        raise BenchTimeout(f"the benchmark ran for more than {seconds} s")

    def on_term(signum: int, frame: object) -> None:
        raise Terminated("terminated")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(seconds)


def clear_limits() -> None:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def http_client(timeout: float = 60.0, base_url: str = "") -> httpx.Client:
    return httpx.Client(
        base_url=base_url, timeout=httpx.Timeout(timeout, connect=10.0), trust_env=False
    )
