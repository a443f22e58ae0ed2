"""Load: 200 concurrent clients against the real server while a download runs.

For DURATION seconds, CLIENTS asyncio tasks (one connection each) loop over a
random mix of ``GET /content/<b64>`` polls (complete, downloading and
unknown entries), ranged ``GET /v2/<name>/blobs/<digest>`` (``a-b``, ``a-``,
``-n``, unsatisfiable, whole) and ``HEAD`` of blobs, while a slow source
trickles a file that is being POSTed. Every answer is checked: status,
headers and the exact bytes of each range. Afterwards the server's open file
descriptors are back where they were and its RSS grew by less than
MAX_RSS_GROWTH.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

DURATION = min(max(float(os.environ.get("LOAD_TEST_SECONDS", "60")), 1.0), 600.0)
"""Seconds of load (60; LOAD_TEST_SECONDS overrides it within [1, 600])."""
CLIENTS = 200
MAX_RANGE = 256 * 1024
FD_SLACK = 6
MAX_RSS_GROWTH = 64 * 1024 * 1024
SLOW_SIZE = 4 * 1024 * 1024
SLOW_CHUNK = 64 * 1024

pytestmark = pytest.mark.slow


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Blob:
    url: str
    data: bytes
    digest: str
    name: str


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def ok(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def bad(self, kind: str, what: str) -> None:
        self.counts["errors"] = self.counts.get("errors", 0) + 1
        if len(self.errors) < 50:
            self.errors.append(f"{kind}: {what}")


def pick_range(rng: random.Random, size: int) -> tuple[str, int, int] | tuple[str, None, None]:
    """A Range header and the inclusive bytes it selects (None, None: 416)."""
    form = rng.random()
    if form < 0.45:
        first = rng.randrange(size)
        last = min(first + rng.randrange(MAX_RANGE), size - 1 + rng.randrange(2) * 1000)
        return f"bytes={first}-{last}", first, min(last, size - 1)
    if form < 0.7:
        first = rng.randrange(max(size - MAX_RANGE, 0), size)
        return f"bytes={first}-", first, size - 1
    if form < 0.95:
        n = rng.randrange(1, MAX_RANGE)
        return f"bytes=-{n}", max(size - n, 0), size - 1
    return f"bytes={size + rng.randrange(1000)}-", None, None


async def check_range(c: httpx.AsyncClient, rng: random.Random, blob: Blob, t: Tally) -> None:
    size = len(blob.data)
    value, first, last = pick_range(rng, size)
    r = await c.get(f"/v2/{blob.name}/blobs/{blob.digest}", headers={"Range": value})
    if first is None or last is None:
        if r.status_code != 416 or r.headers.get("content-range") != f"bytes */{size}":
            t.bad("range416", f"{value} -> {r.status_code} {r.headers.get('content-range')}")
        else:
            t.ok("range416")
        return
    expected = blob.data[first : last + 1]
    if r.status_code != 206:
        t.bad("range", f"{value} -> {r.status_code}")
    elif r.headers.get("content-range") != f"bytes {first}-{last}/{size}":
        t.bad("range", f"{value} -> Content-Range {r.headers.get('content-range')}")
    elif r.headers.get("content-length") != str(len(expected)) or r.content != expected:
        t.bad("range", f"{value} -> {len(r.content)} bytes, not the {len(expected)} expected")
    else:
        t.ok("range")


async def check_whole(c: httpx.AsyncClient, blob: Blob, t: Tally) -> None:
    r = await c.get(f"/v2/{blob.name}/blobs/{blob.digest}")
    if r.status_code != 200 or r.content != blob.data:
        t.bad("get", f"{blob.digest[:19]} -> {r.status_code}, {len(r.content)} bytes")
    else:
        t.ok("get")


async def check_head(c: httpx.AsyncClient, blob: Blob, t: Tally) -> None:
    r = await c.head(f"/v2/{blob.name}/blobs/{blob.digest}")
    if (
        r.status_code != 200
        or r.headers.get("content-length") != str(len(blob.data))
        or r.headers.get("docker-content-digest") != blob.digest
        or r.content
    ):
        t.bad("head", f"{r.status_code} {dict(r.headers)}")
    else:
        t.ok("head")


async def check_poll(c: httpx.AsyncClient, blob: Blob, t: Tally) -> None:
    r = await c.get(f"/content/{b64(blob.url)}")
    body = r.json() if r.status_code == 200 else None
    if body is None or body["digest"] != blob.digest or body["size"] != len(blob.data):
        t.bad("poll", f"{r.status_code} {r.text[:200]}")
    else:
        t.ok("poll")


async def check_unknown(c: httpx.AsyncClient, url: str, t: Tally) -> None:
    r = await c.get(f"/content/{b64(url)}")
    if r.status_code != 404:
        t.bad("unknown", f"{r.status_code} {r.text[:200]}")
    else:
        t.ok("unknown")


@dataclass
class Watch:
    """What one client has seen of the running download (its view only moves forward)."""

    done: int = 0
    complete: bool = False


async def check_running(c: httpx.AsyncClient, slow: Blob, seen: Watch, t: Tally) -> None:
    r = await c.get(f"/content/{b64(slow.url)}")
    if r.status_code not in (200, 206):
        t.bad("running", f"{r.status_code} {r.text[:200]}")
        return
    body = r.json()
    complete = r.status_code == 200
    if complete and (body["digest"] != slow.digest or body["state"] != "complete"):
        t.bad("running", f"complete with {body}")
    elif not complete and (seen.complete or body["state"] not in ("queued", "downloading")):
        t.bad("running", f"206 {body['state']} after complete={seen.complete}")
    elif body["bytesDone"] < seen.done or body["bytesDone"] > len(slow.data):
        t.bad("running", f"bytesDone {body['bytesDone']} after {seen.done}")
    else:
        seen.done, seen.complete = body["bytesDone"], complete
        t.ok("running")
    # /v2 serves only verified blobs: 404 while it is in ingest/, the exact blob after.
    h = await c.head(f"/v2/{slow.name}/blobs/{slow.digest}")
    whole = h.status_code == 200 and h.headers.get("content-length") == str(len(slow.data))
    if whole or (h.status_code == 404 and not complete):
        t.ok("running-head")
    else:
        t.bad("running-head", f"{h.status_code} with complete={complete}")


async def client(
    base_url: str,
    tls: ssl.SSLContext,
    seed: int,
    blobs: list[Blob],
    slow: Blob,
    deadline: float,
    t: Tally,
) -> None:
    rng = random.Random(seed)
    seen = Watch()
    unknown = f"http://127.0.0.1:9/never-posted-{seed}"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # One TLS context for all: httpx would load the CA bundle again for every client.
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits, verify=tls) as c:
        while time.monotonic() < deadline:
            blob = rng.choice(blobs)
            roll = rng.random()
            try:
                if roll < 0.40:
                    await check_range(c, rng, blob, t)
                elif roll < 0.60:
                    await check_head(c, blob, t)
                elif roll < 0.75:
                    await check_poll(c, blob, t)
                elif roll < 0.90:
                    await check_running(c, slow, seen, t)
                elif roll < 0.95:
                    await check_unknown(c, unknown, t)
                else:
                    await check_whole(c, blobs[0], t)  # the small one: whole bodies too
            except httpx.HTTPError as e:
                t.bad("transport", f"{type(e).__name__}: {e}")


async def load(base_url: str, blobs: list[Blob], slow: Blob, t: Tally) -> None:
    tls = ssl.create_default_context()
    deadline = time.monotonic() + DURATION
    await asyncio.gather(
        *(client(base_url, tls, seed, blobs, slow, deadline, t) for seed in range(CLIENTS))
    )


def settle_fds(pid: int, limit: int, timeout: float = 10.0) -> int:
    """The fd count once it is at most ``limit`` (or after ``timeout``)."""
    end = time.monotonic() + timeout
    count = fd_count(pid)
    while count > limit and time.monotonic() < end:
        time.sleep(0.1)
        count = fd_count(pid)
    return count


def test_200_clients_while_a_download_runs(cache_dir: Path, source: Source) -> None:
    rng = random.Random(9)
    sizes = {"/small.bin": 3_000, "/mid.bin": 300_000, "/big.bin": 6 * 1024 * 1024 + 17}
    blobs: list[Blob] = []
    for path, size in sizes.items():
        data = rng.randbytes(size)
        source.add_file(path, data)
        blobs.append(Blob(source.url(path), data, sha(data), ""))
    slow_data = rng.randbytes(SLOW_SIZE)
    source.add_file("/slow.bin", slow_data)
    # It finishes at about 3/4 of the run, so clients see it go from 206 to 200.
    chunks = SLOW_SIZE // SLOW_CHUNK
    source.set_delay("/slow.bin", min(DURATION * 0.75 / chunks, 10.0), chunk=SLOW_CHUNK)
    slow = Blob(source.url("/slow.bin"), slow_data, sha(slow_data), "load/slow")

    with ServerProcess(cache_dir, "--retries", "1") as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        with srv.client() as c:
            for b in blobs:
                r = c.post("/content/", json={"url": b.url})
                assert r.status_code == 201, r.text
                assert r.json()["digest"] == b.digest
                b.name = r.json()["reference"].rsplit(":", 1)[0]
            assert c.get("/healthz").status_code == 200
        fds_before, rss_before = fd_count(pid), rss(pid)

        posted: list[httpx.Response] = []

        def post_slow() -> None:
            with srv.client() as c:
                posted.append(c.post("/content/", json={"url": slow.url}, timeout=DURATION + 60))

        poster = threading.Thread(target=post_slow)
        poster.start()
        tally = Tally()
        peak = [rss_before]
        peak_fds = [fds_before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                peak[0] = max(peak[0], rss(pid))
                peak_fds[0] = max(peak_fds[0], fd_count(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        asyncio.run(load(srv.base_url, blobs, slow, tally))
        elapsed = time.monotonic() - t0
        poster.join(DURATION + 60)
        stop.set()
        sampler.join(5)

        fds_after = settle_fds(pid, fds_before + FD_SLACK)
        rss_after = rss(pid)
        done = sum(n for k, n in tally.counts.items() if k != "errors")
        print(
            f"\nload: {done} requests in {elapsed:.1f} s ({done / elapsed:.0f}/s) by {CLIENTS}"
            f" clients, {tally.counts}; fds {fds_before} -> {fds_after} (peak {peak_fds[0]});"
            f" RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
            f" (peak {peak[0] / 2**20:.1f} MiB)"
        )
        assert tally.errors == [], tally.errors[:10]
        assert posted and posted[0].status_code == 201, posted and posted[0].text
        assert posted[0].json()["digest"] == slow.digest
        assert tally.counts.get("running", 0) > 0 and tally.counts.get("range", 0) > 0
        assert peak_fds[0] >= fds_before + CLIENTS // 2  # the clients really were concurrent
        assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)
        assert rss_after - rss_before < MAX_RSS_GROWTH, (rss_before, rss_after)
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200
    assert (cache_dir / "blobs" / "sha256" / slow.digest[7:]).read_bytes() == slow_data
