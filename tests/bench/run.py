"""The benchmark run: fixtures, servers, scenarios; figures collected for ``report``."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.bench.array import run_array
from tests.bench.harness import (
    WRK_SCRIPT,
    GiB,
    MeasurementError,
    MiB,
    Nginx,
    RssSampler,
    WrkResult,
    analyse_log,
    cpu_busy,
    curl_args,
    curl_get,
    drop_page_cache,
    http_client,
    parse_curl,
    process_tree,
    read_into_page_cache,
    run_wrk,
    settle_disk,
    vm_rss_kib,
)
from tests.bench.index_cost import run_index_cost
from tests.bench.loads import clean_env, oras_pull, run_hey_head, skopeo_pull
from tests.bench.model_ready import run_model_ready
from tests.bench.shared import run_scenario as run_shared
from tests.support.images import OCI_INDEX, OCI_LAYER_TAR, Blobs, push_raw, random_file
from tests.support.registry import Registry
from tests.support.server import ServerProcess

SM = "storage-manager"
NGINX = "nginx"
REGISTRY = "docker-registry"
TITLE = "org.opencontainers.image.title"
MEMORY_LIMIT_MIB = 64.0
MAX_BACKGROUND_INGESTS = 20  # bound of the ingests run behind the serve_during_ingest load

T = TypeVar("T")
SCENARIOS = (
    "full_get",
    "range_1MiB",
    "range_4KiB",
    "head",
    "full_get_8",
    "ingest",
    "oci_pull",
    "serve_during_ingest",
    "array",
    "model_ready",
    "index_cost",
    "shared",
    "workers",
)
SERVING = frozenset({"full_get", "full_get_8", "range_1MiB", "range_4KiB", "head"})
FIXTURE_FREE = frozenset(
    {"array", "model_ready", "index_cost", "shared", "workers"}
)  # scenarios with their own fixtures and servers


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes, durations and repetitions of one run."""

    quick: bool
    big_size: int
    range_size: int
    layer_size: int
    layers: int
    duration: float
    connections: int
    runs: int
    get_runs: int
    ingest_sizes: tuple[int, ...]
    ingest_rounds: int
    time_limit: int
    only: frozenset[str] = frozenset(SCENARIOS)

    @classmethod
    def make(
        cls,
        quick: bool,
        duration: float | None = None,
        time_limit: int | None = None,
        only: frozenset[str] = frozenset(SCENARIOS),
    ) -> Plan:
        shrink = 4 if quick else 1
        return cls(
            quick=quick,
            big_size=GiB // shrink,
            range_size=256 * MiB // shrink,
            layer_size=256 * MiB // shrink,
            layers=4,
            duration=duration if duration is not None else (3.0 if quick else 8.0),
            connections=8,
            runs=3,
            get_runs=5,
            ingest_sizes=(512 * MiB // shrink, GiB // shrink),
            ingest_rounds=5,
            time_limit=time_limit or (900 if quick else 2400),
            only=only,
        )

    @property
    def threads(self) -> int:
        return max(1, min(self.connections, len(os.sched_getaffinity(0))))

    def transfer_timeout(self, size: int) -> float:
        """Generous bound for one transfer of ``size`` bytes (at least 20 MiB/s)."""
        return 30 + size / (20 * MiB)


@dataclasses.dataclass
class BlobFile:
    path: Path
    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


def size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size >= GiB and size % GiB == 0 else f"{size // MiB} MiB"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(key: str, values: list[float], digits: int = 1) -> dict[str, Any]:
    """``key``: the median of ``values``; beside it their minimum, maximum and every run."""
    return {
        key: round(median(values), digits),
        f"{key}_min": round(min(values), digits),
        f"{key}_max": round(max(values), digits),
        f"{key}_runs": [round(v, digits) for v in values],
    }


def rotated(items: list[T], n: int) -> list[T]:
    """``items`` starting at the ``n``-th: round ``n``'s order, so no contender always goes
    first (right after the previous one's cleanup) or last."""
    if not items:
        return items
    k = n % len(items)
    return items[k:] + items[:k]


def ingest_scenario(size: int) -> str:
    return "ingest_" + size_label(size).replace(" ", "")


class Bench:
    """One run. ``figures[scenario][server]`` holds what was measured; ``errors`` what could
    not be; ``notes`` anything odd seen along the way."""

    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.tmp = workdir
        self.figures: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.setup: dict[str, Any] = {}
        self.proxy: ServerProcess | None = None
        self.nginx: Nginx | None = None
        self.registry: Registry | None = None
        self.available: set[str] = set()
        self.cache = workdir / "cache"
        self.www = workdir / "www"
        self.wrk_script = workdir / "ranges.lua"
        self.big: BlobFile | None = None
        self.ranged: BlobFile | None = None
        self.layer_files: list[BlobFile] = []
        self.image_ref = ""
        self._leftovers: list[Path] = []  # outputs of earlier transfer runs, not yet removed
        self._runs = itertools.count()

    # -- bookkeeping ----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def fail(self, scenario: str, server: str, error: BaseException | str) -> None:
        text = str(error).strip()
        self.errors.append({"scenario": scenario, "server": server, "error": text[:3000]})
        self.log(f"{scenario} / {server}: NOT MEASURED: {text.splitlines()[0] if text else ''}")

    def attempt(self, scenario: str, server: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None (recorded as not measured) if it raised. Only ``Exception``s:
        ``BenchTimeout``, ``Terminated`` and ``KeyboardInterrupt`` end the run."""
        try:
            return fn()
        except MeasurementError as e:
            self.fail(scenario, server, e)
        except Exception as e:  # a client library, a process that died, ...
            self.fail(scenario, server, f"{type(e).__name__}: {e}")
        return None

    def record(self, scenario: str, server: str, figure: dict[str, Any]) -> None:
        self.figures.setdefault(scenario, {})[server] = figure

    def ready(self, *servers: str) -> bool:
        return all(s in self.available for s in servers)

    # -- fixtures -------------------------------------------------------------------------------

    def _blob_into_cache(self, size: int, seed: int) -> BlobFile:
        blob_dir = self.cache / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"blob-{seed}.partial"
        digest, _ = random_file(tmp, size, seed=seed)
        path = blob_dir / digest.removeprefix("sha256:")
        tmp.rename(path)
        path.chmod(0o444)
        return BlobFile(path, digest, size)

    def prepare_files(self) -> None:
        t0 = time.monotonic()
        self.log(
            f"writing random blobs: {size_label(self.plan.big_size)}, "
            f"{size_label(self.plan.range_size)}, {self.plan.layers} x "
            f"{size_label(self.plan.layer_size)} layers"
        )
        self.big = self._blob_into_cache(self.plan.big_size, seed=1)
        self.ranged = self._blob_into_cache(self.plan.range_size, seed=2)
        (self.cache / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        (self.cache / "index.json").write_text(json.dumps(index))
        blobs_www = self.www / "v2" / "x" / "blobs"
        blobs_www.mkdir(parents=True)
        for blob in (self.big, self.ranged):
            (blobs_www / f"sha256:{blob.hex}").symlink_to(blob.path)
        (self.www / "files").mkdir()
        (self.www / "files" / "big.bin").symlink_to(self.big.path)
        layer_dir = self.tmp / "layers"
        layer_dir.mkdir()
        for i in range(self.plan.layers if "oci_pull" in self.plan.only else 0):
            path = layer_dir / f"layer-{i}.bin"
            digest, size = random_file(path, self.plan.layer_size, seed=100 + i)
            self.layer_files.append(BlobFile(path, digest, size))
        self.wrk_script.write_text(WRK_SCRIPT)
        self.setup["write_random_files_s"] = round(time.monotonic() - t0, 1)

    def start_servers(self, stack: contextlib.ExitStack) -> None:
        def proxy() -> None:
            server = ServerProcess(self.cache)
            stack.callback(server.stop)
            self.proxy = server.start()
            self.available.add(SM)

        def nginx() -> None:
            server = Nginx(self.tmp / "nginx", self.www)
            stack.callback(server.stop)
            self.nginx = server.start()
            self.available.add(NGINX)
            self.setup["nginx_config"] = (server.workdir / "nginx.conf").read_text()

        def registry() -> None:
            server = Registry(self.tmp / "registry")
            stack.callback(server.stop)
            self.registry = server.start()
            self.available.add(REGISTRY)

        self.attempt("start", SM, proxy)
        self.attempt("start", NGINX, nginx)
        self.attempt("start", REGISTRY, registry)

    def push(self) -> None:
        assert self.big is not None and self.ranged is not None
        registry = self.registry
        if registry is None:
            return
        t0 = time.monotonic()

        def push_blobs() -> bool:
            assert self.big is not None and self.ranged is not None
            blobs = Blobs()
            layers = [
                blobs.add_blob(b.path, OCI_LAYER_TAR, annotations={TITLE: name})
                for b, name in ((self.big, "big.bin"), (self.ranged, "ranges.bin"))
            ]
            config = blobs.config(diff_ids=[d["digest"] for d in layers])
            manifest = blobs.image_manifest(config, layers)
            push_raw(
                registry.url,
                "bench/blob",
                blobs,
                blobs.bytes_of(manifest["digest"]),
                manifest["mediaType"],
                "v1",
            )
            return True

        def push_image() -> None:
            blobs = Blobs()
            layers = [
                blobs.add_blob(b.path, OCI_LAYER_TAR, annotations={TITLE: b.path.name})
                for b in self.layer_files
            ]
            config = blobs.config(diff_ids=[d["digest"] for d in layers])
            manifest = blobs.image_manifest(config, layers)
            push_raw(
                registry.url,
                "bench/img",
                blobs,
                blobs.bytes_of(manifest["digest"]),
                manifest["mediaType"],
                "v1",
            )
            self.image_ref = f"{registry.host}/bench/img:v1"

        self.log(f"pushing bench/blob and bench/img:v1 to docker-registry at {registry.url}")
        if self.attempt("push", REGISTRY, push_blobs) is None:
            self.available.discard(REGISTRY)
        if self.layer_files:
            self.attempt("push", REGISTRY, push_image)
        for layer in self.layer_files:  # the registry has its own copy now
            layer.path.unlink(missing_ok=True)
        self.setup["push_s"] = round(time.monotonic() - t0, 1)

    # -- addresses ------------------------------------------------------------------------------

    def blob_url(self, server: str, blob: BlobFile) -> str:
        if server == SM:
            assert self.proxy is not None
            return f"{self.proxy.base_url}/v2/bench/blob/blobs/{blob.digest}"
        if server == NGINX:
            assert self.nginx is not None
            return f"{self.nginx.url}/v2/x/blobs/{blob.digest}"
        assert self.registry is not None
        return f"{self.registry.url}/v2/bench/blob/blobs/{blob.digest}"

    def check_servers(self) -> None:
        """Every server answers a Range with exactly the right bytes and a HEAD with the size
        (a server that does not is not measured)."""
        assert self.big is not None and self.ranged is not None
        with self.ranged.path.open("rb") as f:
            f.seek(12345)
            expected = f.read(4096)
        for server in (SM, NGINX, REGISTRY):
            if server not in self.available:
                continue

            def check(server: str = server) -> bool:
                assert self.big is not None and self.ranged is not None
                with http_client(30) as client:
                    url = self.blob_url(server, self.ranged)
                    r = client.get(url, headers={"Range": "bytes=12345-16440"})
                    if r.status_code != 206 or r.content != expected:
                        raise MeasurementError(
                            f"Range GET {url}: {r.status_code}, {len(r.content)} bytes"
                            f"{'' if r.content == expected else ' (wrong bytes)'}"
                        )
                    for blob in (self.ranged, self.big):
                        url = self.blob_url(server, blob)
                        r = client.head(url)
                        length = r.headers.get("content-length")
                        if r.status_code != 200 or length != str(blob.size):
                            raise MeasurementError(
                                f"HEAD {url}: {r.status_code}, Content-Length {length}"
                            )
                return True

            if self.attempt("check", server, check) is None:
                self.available.discard(server)

    # -- scenarios ------------------------------------------------------------------------------

    def _rounds(
        self,
        scenario: str,
        servers: list[str],
        runs: int,
        measure: Callable[[str], dict[str, Any]],
    ) -> dict[str, list[dict[str, Any]]]:
        """``runs`` rounds, each server once per round in a rotating order (so a drift of the
        machine hits every server alike); a server that fails once is dropped."""
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
        for n in range(runs):
            for server in rotated(servers, n):
                if server not in results:
                    continue
                figure = self.attempt(scenario, server, lambda server=server: measure(server))
                if figure is None:
                    del results[server]
                else:
                    results[server].append(figure)
        return {s: r for s, r in results.items() if r}

    def _record_rounds(
        self, scenario: str, key: str, results: dict[str, list[dict[str, Any]]]
    ) -> None:
        for server, runs in results.items():
            figure = spread(key, [float(r[key]) for r in runs])
            figure["runs"] = runs
            self.record(scenario, server, figure)

    def _servers(self) -> list[str]:
        return [s for s in (SM, NGINX, REGISTRY) if s in self.available]

    def full_get(self) -> None:
        assert self.big is not None
        big = self.big
        timeout = self.plan.transfer_timeout(big.size)
        settle_disk()
        self.log(
            f"full GET of {size_label(big.size)}, 1 client (curl), {self.plan.get_runs} rounds"
        )

        def once(server: str) -> dict[str, Any]:
            with self._watch(server) as watch:
                r = curl_get(self.blob_url(server, big), max_time=timeout)
            if r.status != 200 or r.size != big.size:
                raise MeasurementError(f"curl got {r.status}, {r.size} bytes")
            return {"seconds": r.seconds, "MiB_per_s": big.size / r.seconds / MiB, **watch}

        results = self._rounds("full_get", self._servers(), self.plan.get_runs, once)
        self._record_rounds("full_get", "MiB_per_s", results)

    def full_get_8(self) -> None:
        """``connections`` concurrent ``curl`` GETs of the whole big blob: the aggregate
        throughput of each server."""
        assert self.big is not None
        big = self.big
        clients = self.plan.connections
        timeout = self.plan.transfer_timeout(big.size * clients)
        settle_disk()
        self.log(
            f"full GET of {size_label(big.size)}, {clients} clients at once (curl), "
            f"{self.plan.runs} rounds"
        )

        def measure(server: str) -> dict[str, Any]:
            url = self.blob_url(server, big)
            procs: list[subprocess.Popen[str]] = []
            with self._watch(server) as watch:
                try:
                    t0 = time.monotonic()
                    for _ in range(clients):
                        procs.append(
                            subprocess.Popen(
                                curl_args(url, "/dev/null", timeout),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                text=True,
                                env=clean_env(),
                            )
                        )
                    outputs = [p.communicate(timeout=timeout + 10) for p in procs]
                    wall = time.monotonic() - t0
                finally:
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                            p.wait(5)
            results = [parse_curl(out) for out, _ in outputs]
            bad = [r for r in results if r.status != 200 or r.size != big.size]
            if bad or any(p.returncode != 0 for p in procs):
                raise MeasurementError(f"concurrent GETs failed: {bad} {[e for _, e in outputs]}")
            return {
                "MiB_per_s": big.size * clients / wall / MiB,
                "wall_s": round(wall, 3),
                "clients": clients,
                **watch,
            }

        results = self._rounds("full_get_8", self._servers(), self.plan.runs, measure)
        self._record_rounds("full_get_8", "MiB_per_s", results)

    def _wrk_checked(self, server: str, url: str, mode: str, length: int, size: int) -> WrkResult:
        result = run_wrk(
            url,
            self.wrk_script,
            mode=mode,
            size=size,
            length=length,
            connections=self.plan.connections,
            threads=self.plan.threads,
            duration=self.plan.duration,
        )
        bad = result.errors["status"]
        socket_errors = {k: v for k, v in result.errors.items() if k != "status" and v}
        if bad > result.requests * 0.01:
            raise MeasurementError(f"{bad} of {result.requests} answers were 4xx/5xx")
        if bad:
            self.notes.append(f"{server}: {bad} answers >= 400 in the {mode} {length} B run")
        if socket_errors:
            self.notes.append(
                f"{server}: wrk socket errors in the {mode} {length} B run: {socket_errors}"
            )
        if mode == "range" and not length <= result.bytes_per_request < length + 4096:
            raise MeasurementError(
                f"{result.bytes_per_request:.0f} bytes per answer to {length}-byte ranges"
            )
        return result

    def ranges(self, scenario: str, length: int) -> None:
        assert self.ranged is not None
        ranged = self.ranged
        self.log(
            f"{length // 1024} KiB random ranges of {size_label(ranged.size)}, "
            f"{self.plan.connections} connections, {self.plan.duration:.0f} s each (wrk), "
            f"{self.plan.runs} rounds"
        )

        def measure(server: str) -> dict[str, Any]:
            url = self.blob_url(server, ranged)
            with self._watch(server) as watch:
                result = self._wrk_checked(server, url, "range", length, ranged.size)
            return {**result.to_json(), **watch}

        results = self._rounds(scenario, self._servers(), self.plan.runs, measure)
        self._record_rounds(scenario, "requests_per_s", results)

    def head(self) -> None:
        assert self.ranged is not None
        ranged = self.ranged
        self.log(
            f"HEAD blob, {self.plan.connections} connections, {self.plan.duration:.0f} s each "
            f"(hey: wrk cannot do HEAD), {self.plan.runs} rounds"
        )

        def measure(server: str) -> dict[str, Any]:
            url = self.blob_url(server, ranged)
            with self._watch(server) as watch:
                figure = run_hey_head(url, self.plan.connections, self.plan.duration)
            total = figure["requests"]
            ok = figure["statuses"].get("200", 0)
            if total - ok > total * 0.01:
                raise MeasurementError(f"HEAD answers: {figure['statuses']}")
            if total != ok or figure["errors"]:
                self.notes.append(
                    f"{server}: HEAD answers {figure['statuses']}, errors {figure['errors']}"
                )
            return {**figure, **watch}

        results = self._rounds("head", self._servers(), self.plan.runs, measure)
        self._record_rounds("head", "requests_per_s", results)

    @contextlib.contextmanager
    def _watch(self, server: str) -> Iterator[dict[str, Any]]:
        """For storage-manager: its log during the block (added to ``out``; its memory is
        sampled over all the serving scenarios at once, by :meth:`run_common`)."""
        out: dict[str, Any] = {}
        if server != SM or self.proxy is None:
            yield out
            return
        first = len(self.proxy.lines)
        yield out
        time.sleep(0.2)  # the last access-log lines
        out["log"] = analyse_log(self.proxy.lines[first:])

    def _output(self, name: str) -> Path:
        """A new path for one transfer run's output; removed by the next :meth:`_clock_ready`."""
        path = self.tmp / f"{name}-{next(self._runs)}"
        self._leftovers.append(path)
        return path

    def _clock_ready(self) -> None:
        """Called by every transfer contender right before its clock starts: remove what the
        earlier runs wrote, then ``sync``. On this kind of VM (free page reporting) memory that
        was freed more than a couple of seconds ago has gone back to the host and costs a host
        page fault per page to fill again, while memory freed just now does not: a contender
        that started right after the previous one deleted its gigabyte ran up to 1.5x faster
        than one that first started a server. Doing the same steps at the same moment for
        every contender gives each the same memory."""
        self._clear_outputs(keep_last=True)  # the run about to start has named its output
        settle_disk()

    def _clear_outputs(self, keep_last: bool = False) -> None:
        """Remove the outputs of earlier transfer runs (all, or all but the newest)."""
        keep = self._leftovers[-1:] if keep_last else []
        for path in self._leftovers[: len(self._leftovers) - len(keep)]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._leftovers = keep

    def _post_content(
        self,
        url: str,
        size: int | None,
        digest: str | None,
        timeout: float,
        ready: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """A fresh storage-manager on an empty cache (its default ``--workers`` and write
        mode); time ``POST /content/ {url}`` to its 201. ``ready`` (default
        :meth:`_clock_ready`) runs right before the clock starts."""
        cache = self._output("fresh-cache")
        server = ServerProcess(cache)
        try:
            server.start()
            assert server.proc is not None
            body: dict[str, str] = {"url": url}
            if digest:
                body["digest"] = digest
            with http_client(timeout, base_url=server.base_url) as client:
                client.get("/readyz")  # the connection is open before the clock starts
                with RssSampler(server.proc.pid) as rss:
                    rss.mark()
                    (ready or self._clock_ready)()
                    t0 = time.monotonic()
                    r = client.post("/content/", json=body)
                    seconds = time.monotonic() - t0
                if r.status_code != 201:
                    raise MeasurementError(f"POST /content/ {url}: {r.status_code} {r.text[:500]}")
                entry = r.json()
                if entry.get("state") != "complete":
                    raise MeasurementError(f"POST /content/ {url}: not complete: {entry}")
                if size is not None and entry.get("size") != size:
                    raise MeasurementError(f"POST /content/ {url}: size {entry.get('size')}")
                if digest and entry.get("digest") != digest:
                    raise MeasurementError(f"POST /content/ {url}: digest {entry.get('digest')}")
            time.sleep(0.1)
            return {"seconds": seconds, "rss": rss.summary(), "log": analyse_log(server.lines)}
        finally:
            server.stop()

    def _interleaved(
        self,
        scenario: str,
        contenders: list[tuple[str, Callable[[], dict[str, Any]]]],
        rounds: int | None = None,
        alternate: bool = False,
    ) -> None:
        """``rounds`` (default ``plan.runs``) rounds, each contender once per round (so drifts
        hit them alike; with ``alternate``, in a rotating order); a contender that fails once
        is dropped. Records the median ``seconds`` of each."""
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
        for n in range(rounds or self.plan.runs):
            for name, fn in rotated(contenders, n) if alternate else contenders:
                if name not in results:
                    continue
                run = self.attempt(scenario, name, fn)
                if run is None:
                    del results[name]
                else:
                    results[name].append(run)
        self._clear_outputs()
        for name, runs in results.items():
            self._record_timed(scenario, name, runs)

    def _same_state(self, source: Path) -> None:
        """Before each ingest contender's clock: every earlier output deleted, ``sync`` (no
        dirty pages), the page cache dropped where root may (``echo 1 >
        /proc/sys/vm/drop_caches``), then the source file read back in, so that nginx serves
        it from memory as a remote server would. Each contender starts from this same state,
        at the same step: a fresh file of its own to write into memory that nobody has just
        freed."""
        self._clear_outputs(keep_last=True)  # the run about to start has named its output
        dropped = drop_page_cache()
        read_into_page_cache(source)
        state = (
            "outputs deleted, sync, page cache dropped (drop_caches 1), source read back in"
            if dropped
            else "outputs deleted, sync (drop_caches not permitted: the page cache was kept)"
        )
        self.setup.setdefault("ingest_page_cache_states", [])
        if state not in self.setup["ingest_page_cache_states"]:
            self.setup["ingest_page_cache_states"].append(state)

    def _ingest_source(self, size: int) -> BlobFile:
        """A new random file of ``size`` bytes for nginx to serve: in no cache, never read."""
        files = self.www / "files"
        path = files / f"ingest-{size}.bin"
        digest, _ = random_file(path, size, seed=1000 + size // MiB)
        return BlobFile(path, digest, size)

    def ingest(self) -> None:
        if not self.ready(NGINX) or self.nginx is None:
            self.fail("ingest", NGINX, "nginx (the ingest source) is not running")
            return
        for size in self.plan.ingest_sizes:
            self._ingest_one(size)

    def _ingest_one(self, size: int) -> None:
        """``POST /content/ {url}`` into a fresh storage-manager (its default write mode)
        against ``curl -o FILE``, ``ingest_rounds`` alternating rounds (storage-manager first
        in the even ones, curl in the odd ones), each contender from :meth:`_same_state` and
        with a URL of its own (a query nginx ignores), so that every run is a download."""
        assert self.nginx is not None
        scenario = ingest_scenario(size)
        rounds = self.plan.ingest_rounds
        self.log(
            f"ingest of a fresh {size_label(size)} file over http:// (POST /content/ vs "
            f"curl -o), {rounds} alternating rounds"
        )
        source = self._ingest_source(size)
        base = f"{self.nginx.url}/files/{source.path.name}"
        timeout = self.plan.transfer_timeout(size)
        runs = itertools.count()

        def with_curl() -> dict[str, Any]:
            out = self._output("curl-ingest.bin")
            self._same_state(source.path)
            r = curl_get(f"{base}?run={next(runs)}", str(out), max_time=timeout)
            if r.status != 200 or r.size != size:
                raise MeasurementError(f"curl got {r.status}, {r.size} bytes")
            t0 = time.monotonic()
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return {"seconds": r.seconds, "fsync_seconds": time.monotonic() - t0}

        def with_post() -> dict[str, Any]:
            url = f"{base}?run={next(runs)}"
            return self._post_content(
                url, size, source.digest, timeout, ready=lambda: self._same_state(source.path)
            )

        contenders: list[tuple[str, Callable[[], dict[str, Any]]]] = [("curl", with_curl)]
        if SM in self.available:
            contenders.insert(0, (SM, with_post))
        try:
            self._interleaved(scenario, contenders, rounds, alternate=True)
        finally:
            source.path.unlink(missing_ok=True)
        curl = self.figures.get(scenario, {}).get("curl")
        if curl is not None:
            both = [r["seconds"] + r["fsync_seconds"] for r in curl["raw"]]
            self.record(scenario, "curl+fsync", self._times(both))
        ours = self.figures.get(scenario, {}).get(SM)
        if ours is not None:
            worst = max(ours["rss_runs"], key=_growth)
            earlier = self.figures.get("memory_ingest", {}).get(SM)
            if earlier is None or _growth(worst) > _growth(earlier):
                self.record("memory_ingest", SM, {**worst, "ingest": size_label(size)})

    def oci_pull(self) -> None:
        if not self.ready(REGISTRY) or not self.image_ref:
            self.fail("oci_pull", REGISTRY, "no image to pull (docker-registry or the push failed)")
            return
        total = self.plan.layers * self.plan.layer_size
        self.log(
            f"oci:// pull of {self.plan.layers} x {size_label(self.plan.layer_size)} layers "
            f"(storage-manager vs oras-py vs skopeo), {self.plan.runs} runs"
        )
        timeout = self.plan.transfer_timeout(total)

        def client(fn: Callable[[str, Path, float], dict[str, Any]]) -> dict[str, Any]:
            out = self._output("pulled")
            self._clock_ready()
            result = fn(self.image_ref, out, timeout)
            if result["bytes"] < total:
                raise MeasurementError(f"only {result['bytes']} bytes pulled: {result}")
            return result

        contenders: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("oras-py", lambda: client(oras_pull)),
            ("skopeo", lambda: client(skopeo_pull)),
        ]
        if SM in self.available:
            oci_url = f"oci://{self.image_ref}"
            contenders.insert(0, (SM, lambda: self._post_content(oci_url, None, None, timeout)))
        self._interleaved("oci_pull", contenders)

    def serve_during_ingest(self) -> None:
        """1 MiB random ranges from storage-manager alone, then again while the same server
        ingests the 1 GiB file over and over (new URLs: each a full download, hashed and
        written): how much serving gives up to an ingest on the same two cores."""
        assert self.ranged is not None and self.big is not None
        if not self.ready(SM, NGINX) or self.proxy is None or self.nginx is None:
            self.fail("serve_during_ingest", SM, "storage-manager or nginx is not running")
            return
        ranged, big, proxy, nginx = self.ranged, self.big, self.proxy, self.nginx
        self.log(
            f"1 MiB random ranges of {size_label(ranged.size)}, {self.plan.connections} "
            f"connections, {self.plan.duration:.0f} s alone, then as long during repeated "
            f"ingests of {size_label(big.size)} into the same server"
        )
        url = self.blob_url(SM, ranged)
        settle_disk()
        alone = self.attempt("serve_during_ingest", SM, lambda: self._wrk_ranges(url))
        if alone is None:
            return
        self.record("serve_during_ingest", f"{SM} alone", alone)
        stop = threading.Event()
        ingests: list[float] = []
        failures: list[str] = []

        def ingest_loop() -> None:
            timeout = self.plan.transfer_timeout(big.size)
            with http_client(timeout, base_url=proxy.base_url) as client:
                for n in range(MAX_BACKGROUND_INGESTS):
                    if stop.is_set():
                        return
                    t0 = time.monotonic()
                    body = {"url": f"{nginx.url}/files/big.bin?serve-during-ingest={n}"}
                    r = client.post("/content/", json=body)
                    if r.status_code != 201:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        return
                    ingests.append(time.monotonic() - t0)

        settle_disk()
        worker = threading.Thread(target=ingest_loop, daemon=True, name="bench-ingests")
        worker.start()
        try:
            time.sleep(0.5)  # the first ingest is streaming when the load starts
            during = self.attempt("serve_during_ingest", SM, lambda: self._wrk_ranges(url))
        finally:
            stop.set()
            worker.join(self.plan.transfer_timeout(big.size))
        if failures:
            self.fail("serve_during_ingest", SM, f"background ingest failed: {failures[0]}")
            return
        if during is None:
            return
        during["ingests_completed"] = len(ingests)
        if ingests:
            during["ingest_seconds_median"] = round(median(ingests), 3)
            during["ingest_MiB_per_s"] = round(big.size / MiB / median(ingests), 1)
        self.record("serve_during_ingest", SM, during)

    def _wrk_ranges(self, url: str) -> dict[str, Any]:
        assert self.ranged is not None
        return self._wrk_checked(SM, url, "range", 1 << 20, self.ranged.size).to_json()

    @staticmethod
    def _times(times: list[float]) -> dict[str, Any]:
        return {
            "seconds_median": round(median(times), 3),
            "seconds_min": round(min(times), 3),
            "seconds_max": round(max(times), 3),
            "seconds_runs": [round(t, 3) for t in times],
        }

    def _record_timed(self, scenario: str, server: str, runs: list[dict[str, Any]]) -> None:
        if not runs:
            return
        figure = self._times([r["seconds"] for r in runs])
        figure["raw"] = [{k: v for k, v in r.items() if k not in ("rss", "log")} for r in runs]
        if "rss" in runs[0]:
            figure["rss_runs"] = [r["rss"] for r in runs]
        logs = [r["log"] for r in runs if "log" in r]
        if logs:
            figure["log_problem_lines"] = sum(log["problem_lines"] for log in logs)
            figure["log_problems"] = [p for log in logs for p in log["problems"]][:10]
        self.record(scenario, server, figure)

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> None:
        busy = cpu_busy(1.0)
        self.setup["cpu_busy_before_start"] = round(busy, 3)
        if busy > 0.1:
            self.notes.append(
                f"the machine was {busy:.0%} busy before the run started: other processes "
                "compete with the servers and the load generators, figures are noisier"
            )
        if self.plan.only - FIXTURE_FREE:
            self.run_common()
        if "array" in self.plan.only:
            run_array(self)
        if "model_ready" in self.plan.only:
            run_model_ready(self)
        if "index_cost" in self.plan.only:
            run_index_cost(self)
        if "workers" in self.plan.only:
            from tests.bench.workers import run_in_bench

            run_in_bench(self)
        if "shared" in self.plan.only:
            run_shared(self)
        self.attempt("observe", SM, self.observe)  # notes: never worth the figures

    def run_common(self) -> None:
        """The scenarios that share the blobs, nginx, docker-registry and one server."""
        self.prepare_files()
        with contextlib.ExitStack() as stack:
            self.start_servers(stack)
            self.push()
            t0 = time.monotonic()
            settle_disk()
            self.setup["sync_after_setup_s"] = round(time.monotonic() - t0, 1)
            self.check_servers()
            if self.proxy is not None and self.proxy.proc is not None:
                self.setup["proxy_rss_at_start_MiB"] = _rss_mib(self.proxy.proc.pid)
            only = self.plan.only
            with contextlib.ExitStack() as serving:
                proc = self.proxy.proc if self.proxy is not None else None
                if proc is not None and only & SERVING:
                    # Every process of the server (with --workers: the writer and each
                    # reader) from before the first load to after the last.
                    rss = serving.enter_context(RssSampler(proc.pid))
                    rss.mark()

                    def memory() -> None:
                        if (figure := self.attempt("memory_serving", SM, rss.summary)) is not None:
                            self.record("memory_serving", SM, figure)

                    serving.callback(memory)
                if "full_get" in only:
                    self.full_get()
                if "full_get_8" in only:
                    self.full_get_8()
                if "range_1MiB" in only:
                    self.ranges("range_1MiB", 1 << 20)
                if "range_4KiB" in only:
                    self.ranges("range_4KiB", 4 << 10)
                if "head" in only:
                    self.head()
            if self.proxy is not None and self.proxy.proc is not None:
                self.setup["proxy_rss_after_load_MiB"] = _rss_mib(self.proxy.proc.pid)
                self.setup["proxy_processes"] = len(process_tree(self.proxy.proc.pid))
                if self.proxy.proc.poll() is not None:
                    self.fail("run", SM, f"storage-manager exited: {self.proxy.proc.returncode}")
                whole = analyse_log(self.proxy.lines)
                self.setup["proxy_log"] = whole
            if "ingest" in only:
                self.ingest()
            if "oci_pull" in only:
                self.oci_pull()
            if "serve_during_ingest" in only:
                self.serve_during_ingest()

    def observe(self) -> None:
        """Notes on storage-manager's behaviour that the figures alone do not show."""
        for scenario, per_run in (("full_get", 1), ("full_get_8", self.plan.connections)):
            runs = self.figures.get(scenario, {}).get(SM, {}).get("runs", [])
            expected = per_run * len(runs)
            logged = sum(r["log"]["requests"].get("GET 200", 0) for r in runs if "log" in r)
            if runs and logged < expected:
                self.notes.append(
                    f"storage-manager: {scenario}: {expected} complete GETs of the whole blob "
                    f"(curl, which closes the connection after the last byte) but only {logged} "
                    "access-log lines for them"
                )
        for scenario in (*map(ingest_scenario, self.plan.ingest_sizes), "oci_pull"):
            figure = self.figures.get(scenario, {}).get(SM)
            if figure is None:
                continue
            rss = figure["rss_runs"]
            worst = max(_growth(r) for r in rss)
            kept = max(r["final_MiB"] - r["baseline_MiB"] for r in rss)
            if worst >= MEMORY_LIMIT_MIB or kept >= MEMORY_LIMIT_MIB / 4:
                self.notes.append(
                    f"storage-manager: {scenario}: RSS grew by up to {worst:.1f} MiB "
                    f"(runs: {', '.join(f'{_growth(r):.1f}' for r in rss)}); "
                    f"up to {kept:.1f} MiB still held once the POST had answered"
                )
        for scenario, servers in self.figures.items():
            for server, figure in servers.items():
                if not isinstance(figure, dict):  # a scenario's own figures (shared: waves)
                    continue
                runs = figure.get("runs")
                each = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
                logs = [figure.get("log", {})] + [r.get("log", {}) for r in each]
                problems = sum(log.get("problem_lines", 0) for log in logs)
                problems += figure.get("log_problem_lines", 0)
                if problems:
                    self.notes.append(
                        f"{server}: {scenario}: {problems} WARNING/ERROR lines in its log"
                    )
        whole = self.setup.get("proxy_log", {})
        if whole.get("problem_lines"):
            self.notes.append(
                f"storage-manager: {whole['problem_lines']} WARNING/ERROR lines in its log: "
                f"{whole['problems'][:3]}"
            )


def _growth(rss: dict[str, Any]) -> float:
    return float(rss["growth_MiB"])


def _rss_mib(pid: int) -> float | None:
    kib = vm_rss_kib(pid)
    return round(kib / 1024, 1) if kib is not None else None
