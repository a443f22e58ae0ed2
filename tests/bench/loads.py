"""Load generators and client runs other than wrk: hey (HEAD), oras-py and skopeo pulls."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.harness import MeasurementError

HEY_BINARY = "/usr/bin/hey"
SKOPEO_BINARY = "/usr/bin/skopeo"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a client: no HTTP proxy variables (everything is on loopback)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# -- hey: HEAD requests -------------------------------------------------------------------------
#
# wrk 4.1 cannot measure HEAD: its response parser has no ``on_headers_complete`` hook to say
# "no body follows", so after a HEAD answer carrying the blob's Content-Length it waits for that
# many body bytes and never completes a request (0 requests in any run). ab speaks HTTP/1.0,
# whose keep-alive Twisted does not implement (a new connection per request). hey (Go's
# net/http client, HTTP/1.1 keep-alive) is used for HEAD instead, the same for every server.


def run_hey_head(url: str, connections: int, duration: float) -> dict[str, Any]:
    if shutil.which(HEY_BINARY) is None:
        raise MeasurementError(f"{HEY_BINARY} is not installed (apt-get install hey)")
    seconds = max(1, round(duration))
    cmd = [HEY_BINARY, "-z", f"{seconds}s", "-c", str(connections), "-t", "10", "-m", "HEAD", url]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, check=False, env=clean_env()
        )
    except subprocess.TimeoutExpired as e:
        raise MeasurementError(f"hey did not finish: {' '.join(cmd)}") from e
    rps = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    if proc.returncode != 0 or rps is None:
        raise MeasurementError(f"hey failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    statuses = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s+\[(\d+)\]\s+(\d+) responses", proc.stdout, re.MULTILINE)
    }
    errors: dict[str, int] = {}
    _, _, error_part = proc.stdout.partition("Error distribution:")
    for m in re.finditer(r"^\s+\[(\d+)\]\s+(.+)$", error_part, re.MULTILINE):
        errors[m.group(2).strip()[:200]] = int(m.group(1))
    total = sum(statuses.values())
    if total == 0:
        raise MeasurementError(f"hey got no answer from {url}: {proc.stdout[-1500:]}")
    latency: dict[str, float] = {}
    for key, pattern in (
        ("mean", r"Average:\s+([\d.]+) secs"),
        ("p99", r"99% in ([\d.]+) secs"),
        ("max", r"Slowest:\s+([\d.]+) secs"),
    ):
        found = re.search(pattern, proc.stdout)
        if found:
            latency[key] = round(float(found.group(1)) * 1000, 3)
    return {
        "requests_per_s": round(float(rps.group(1)), 1),
        "requests": total,
        "duration_s": seconds,
        "statuses": statuses,
        "errors": errors,
        "latency_ms": latency,
        "load_generator": "hey",
    }


# -- oras-py and skopeo pulls -------------------------------------------------------------------

_ORAS_PULL = """
import sys, time
import oras.client

target, outdir = sys.argv[1], sys.argv[2]
client = oras.client.OrasClient(insecure=True)
t0 = time.monotonic()
files = client.pull(target=target, outdir=outdir)
print("BENCH-ORAS", time.monotonic() - t0, len(files))
"""


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def oras_pull(target: str, outdir: Path, timeout: float) -> dict[str, Any]:
    """oras-py's ``OrasClient(insecure=True).pull`` in a child interpreter (so it is bounded in
    time); timed inside it, around ``pull`` alone (the interpreter's start and the import are
    not counted)."""
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ORAS_PULL, target, str(outdir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(),
        )
    except subprocess.TimeoutExpired as e:
        raise MeasurementError(f"oras-py pull of {target} took more than {timeout} s") from e
    m = re.search(r"^BENCH-ORAS ([\d.e-]+) (\d+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or m is None:
        raise MeasurementError(f"oras-py pull failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return {"seconds": float(m.group(1)), "files": int(m.group(2)), "bytes": _dir_bytes(outdir)}


def skopeo_pull(reference: str, outdir: Path, timeout: float) -> dict[str, Any]:
    """``skopeo copy --src-tls-verify=false docker://REF dir:OUT``, timed from outside (its
    process start, a few ms, is counted)."""
    if shutil.which(SKOPEO_BINARY) is None:
        raise MeasurementError(f"{SKOPEO_BINARY} is not installed (apt-get install skopeo)")
    tmp = outdir.parent / f"{outdir.name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [
        SKOPEO_BINARY,
        "--insecure-policy",
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--src-no-creds",
        f"docker://{reference}",
        f"dir:{outdir}",
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(TMPDIR=str(tmp)),
        )
    except subprocess.TimeoutExpired as e:
        raise MeasurementError(f"skopeo copy of {reference} took more than {timeout} s") from e
    seconds = time.monotonic() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise MeasurementError(f"skopeo copy failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return {"seconds": seconds, "bytes": _dir_bytes(outdir)}
