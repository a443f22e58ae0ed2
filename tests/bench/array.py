"""The cache-array benchmark (issue 21): 8 nodes pull one model through a WAN-capped origin.

Setup: 8 storage-manager processes on 127.0.0.1 .. 127.0.0.8 (each its own cache directory,
a cluster token), an origin on loopback capped at 100 MiB/s in all (:mod:`tests.bench.wan`),
one model of 4 random files (512 MiB in all; ``--quick``: 128 MiB). Every node POSTs
``/content/`` for each of the 4 files at the same moment (32 requests at once), each with the
file's ``digest``, so that the blob goes through its owner. Side by side in one run:

* ``alone``: one node, no peers; the reference time (run as often as ``peers``, interleaved).
* ``independent``: 8 nodes without ``--peers``; each fetches the whole model from the origin.
* ``peers``: 8 nodes with ``--peers`` listing all (``--peer-fanout`` 8, the default), at least
  3 times, reported as min / median / max.
* ``tree``: the same with ``--peer-fanout 2`` (once), so that the owner redirects and the 8
  nodes form a tree of depth 3: what a level of the tree costs.

Figures: bytes served by the origin (target: at most 1.05x the model), the time until all 8
nodes have all 4 files complete (target: at most 1.5x the time of one node alone), the most
any node uploaded to peers (``storage_manager_peer_bytes_total{direction="served"}``) and the
highest ``mostAtOnce`` of ``GET /admin/peers`` ``fanout``.

Estimate for 100 and 1,000 nodes (printed with the figures, see :func:`estimate`):

* Every blob is fetched from the origin once, by its owner, whatever the number of nodes:
  the origin serves S (the model's size) instead of N x S.
* A node streams one blob to at most f (``--peer-fanout``) peers at once; the next are sent
  to a holder, which does the same, so the nodes reached within d levels are
  f + f^2 + ... + f^d: at f = 8, 100 nodes need 3 levels, 1,000 need 4 (2,600: 4 too;
  ``MAX_HOPS`` = 4 redirects allow 5 levels, 37,448 nodes).
* Every level streams while it receives (a fill in progress is served as it grows), so a
  level adds a start-up latency l (a redirect, a connection, the first chunk), not a
  transfer: T(N) ~ S / r + d(N) x l. The rate r is the smallest of the origin's rate R and
  a node's upload U shared by the streams it serves: one blob, U / f per stream; k blobs
  with different owners spread the interior of the trees over the nodes, U x min(k, f) / f.
* Here R = 100 MiB/s and loopback is far faster, so r = R: T(100) and T(1,000) are the
  one-node time plus 3 or 4 times l. Off loopback that needs U >= f x R = 800 MiB/s per node
  (a 10 Gb/s NIC) while it serves f streams of one blob. l is taken from this run, as the
  larger of two measured costs: T_peers - T_alone (one level, 8 nodes) and
  (T_tree - T_peers) / 2 (fan-out 2 adds two levels). Both are upper bounds: here all 8
  nodes also share 2 CPUs to receive, hash and write 8 copies.
* Kraken's published figure (a 3 GB image to 2,600 hosts, p50 10 s, 300 MB/s per agent) is
  a swarm inside the data centre: every agent uploads about as much as it downloads, so
  T ~ S / U = 10 s. This tree in the same place (origin in the data centre, U = 300 MB/s,
  2,600 nodes: 4 levels): a single 3 GB blob is upload-bound at U / 8 per stream, ~80 s
  (fan-out 2: U / 2, ~20 s, but 11 levels, more than MAX_HOPS allows). With k >= 8 blobs of
  distinct owners every node uploads S on average, so S / U = 10 s is the floor, but each
  tree goes at the pace of its busiest interior node (one that is interior in several trees
  at once), so somewhere between 10 and 80 s: the fixed fan-out trades Kraken's use of every
  leaf's upload for no tracker, no piece protocol, and one hop per level. Behind a WAN link,
  as in this benchmark, both are bound by the origin, and the tree's depth costs only d x l.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench.harness import MeasurementError, MiB, analyse_log, http_client, settle_disk
from tests.bench.wan import WanOrigin
from tests.support.images import random_file
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from tests.bench.run import Bench

SCENARIO = "array"
NODES = 8
FILES = 4
MODEL_SIZE = 512 * MiB
ORIGIN_RATE = 100 * MiB
PEER_RUNS = 3
FANOUT = 8  # storage-manager's default --peer-fanout
TOKEN = "bench-array-token"
MAX_HOPS = 4  # proxy.service.peerroute.MAX_HOPS: redirects followed for one blob
ORIGIN_TARGET = 1.05  # origin bytes <= 1.05 x the model
TIME_TARGET = 1.5  # all 8 complete <= 1.5 x one node alone
KRAKEN = "Kraken: 3 GB image to 2,600 hosts, p50 10 s, 300 MB/s per agent"


@dataclasses.dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    digest: str
    size: int


@dataclasses.dataclass(frozen=True)
class Mode:
    key: str
    title: str
    nodes: int
    peers: bool
    args: tuple[str, ...] = ()


ALONE = Mode("alone", "1 node alone", 1, False)
INDEPENDENT = Mode("independent", f"{NODES} nodes, no --peers", NODES, False)
PEERS = Mode("peers", f"{NODES} nodes, --peers", NODES, True)
TREE = Mode("tree", f"{NODES} nodes, --peers --peer-fanout 2", NODES, True, ("--peer-fanout", "2"))
MODES = (ALONE, INDEPENDENT, PEERS, TREE)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float:
    """The sum of the samples of ``name`` (labels included in the name) in ``/metrics``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


class Cluster:
    """``mode.nodes`` storage-manager processes on 127.0.0.1, 127.0.0.2, ..., each with its
    own cache under ``root``; with ``--peers`` listing all when ``mode.peers``."""

    def __init__(self, root: Path, mode: Mode) -> None:
        self.root = root
        self.mode = mode
        hosts = [f"127.0.0.{i + 1}" for i in range(mode.nodes)]
        self.addresses = [f"{h}:{_free_port(h)}" for h in hosts]
        self.nodes: list[ServerProcess] = []

    def start(self) -> Cluster:
        for i, address in enumerate(self.addresses):
            args: list[str] = []
            if self.mode.peers:
                args = ["--peers", ",".join(self.addresses), *self.mode.args]
            self.nodes.append(
                ServerProcess(
                    self.root / f"n{i}",
                    *args,
                    address=address,
                    env={"NEKKO_CLUSTER_TOKEN": TOKEN},
                )
            )
        errors: list[BaseException] = []

        def start(node: ServerProcess) -> None:
            try:
                node.start(timeout=90)
            except Exception as e:  # reported below, once every start has ended
                errors.append(e)

        threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors or any(t.is_alive() for t in threads):
            self.stop()
            raise MeasurementError(f"a node did not start: {errors[0] if errors else 'timeout'}")
        return self

    def stop(self) -> None:
        threads = [threading.Thread(target=n.stop, daemon=True) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def model_files(root: Path, size: int) -> list[ModelFile]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(FILES):
        name = f"model-{i + 1:05d}-of-{FILES:05d}.safetensors"
        digest, n = random_file(root / name, size // FILES, seed=2100 + i)
        files.append(ModelFile(name, root / name, digest, n))
    return files


def owner(addresses: list[str], digest: str) -> str:
    """The blob's owner, as every node computes it (README: rendezvous hashing)."""
    return max(addresses, key=lambda a: hashlib.sha256(f"{a}|{digest}".encode()).hexdigest())


def pull(cluster: Cluster, origin: WanOrigin, files: list[ModelFile]) -> dict[str, Any]:
    """Every node POSTs every file at once; the figures of that pull."""
    model = sum(f.size for f in files)
    timeout = 120 + 2 * cluster.mode.nodes * model / ORIGIN_RATE
    go = threading.Event()
    t0 = 0.0

    def post(node: ServerProcess, f: ModelFile) -> float:
        body = {"url": origin.url(f.name), "digest": f.digest}
        with http_client(timeout, base_url=node.base_url) as client:
            client.get("/readyz")  # connected before the clock starts
            go.wait(60)
            r = client.post("/content/", json=body)
            done = time.monotonic()
        entry = r.json() if r.headers.get("content-type", "").startswith("application/") else {}
        if r.status_code != 201 or entry.get("state") != "complete":
            raise MeasurementError(f"{node.base_url} POST {f.name}: {r.status_code} {r.text[:300]}")
        if entry.get("digest") != f.digest or entry.get("size") != f.size:
            raise MeasurementError(f"{node.base_url} {f.name}: {entry}")
        if Path(entry["path"]).stat().st_size != f.size:
            raise MeasurementError(f"{node.base_url} {f.name}: {entry['path']} has the wrong size")
        return done - t0

    origin.take_counts()
    with ThreadPoolExecutor(len(cluster.nodes) * len(files), thread_name_prefix="pull") as pool:
        futures = [(i, pool.submit(post, n, f)) for i, n in enumerate(cluster.nodes) for f in files]
        time.sleep(1.0)  # every request thread connected and waiting
        t0 = time.monotonic()
        go.set()
        per_node = [0.0] * len(cluster.nodes)
        for i, future in futures:
            per_node[i] = max(per_node[i], future.result(timeout + 60))
    served = origin.take_counts()
    time.sleep(0.3)  # the last access-log lines and metric updates
    nodes = [_node_figures(n) for n in cluster.nodes]
    return {
        "seconds_all": round(max(per_node), 3),
        "seconds_per_node": [round(s, 3) for s in per_node],
        "origin_bytes": served.bytes,
        "origin_x_model": round(served.bytes / model, 3),
        "origin_gets": sum(served.gets.values()),
        "origin_heads": sum(served.heads.values()),
        "origin_gets_per_file": dict(served.gets),
        "origin_bytes_per_file": dict(served.bytes_by_file),
        "max_uploaded_bytes": max(n["served_bytes"] for n in nodes),
        "max_most_at_once": max(n["most_at_once"] or 0 for n in nodes),
        "owners": {f.name: owner(cluster.addresses, f.digest) for f in files if cluster.mode.peers},
        "nodes": nodes,
    }


def _node_figures(node: ServerProcess) -> dict[str, Any]:
    with http_client(30, base_url=node.base_url) as client:
        text = client.get("/metrics").text
        peers = client.get("/admin/peers")
    fanout = peers.json().get("fanout", {}) if peers.status_code == 200 else {}
    log = analyse_log(node.lines)
    return {
        "address": node.base_url,
        "origin_bytes": int(metric(text, "storage_manager_origin_bytes_total")),
        "served_bytes": int(metric(text, 'storage_manager_peer_bytes_total{direction="served"}')),
        "received_bytes": int(
            metric(text, 'storage_manager_peer_bytes_total{direction="received"}')
        ),
        "peer_failures": int(metric(text, "storage_manager_peer_failures_total")),
        "most_at_once": fanout.get("mostAtOnce"),
        "blobs_from_peers": sum(1 for line in node.lines if " from peer " in line),
        "log_problem_lines": log["problem_lines"],
        "log_problems": log["problems"][:3],
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(float(statistics.median(values)), 3),
        "max": round(max(values), 3),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "seconds_all": _spread([r["seconds_all"] for r in runs]),
        "seconds_median": _spread([r["seconds_all"] for r in runs])["median"],
        "origin_bytes": _spread([r["origin_bytes"] for r in runs]),
        "origin_x_model_max": max(r["origin_x_model"] for r in runs),
        "max_uploaded_bytes": _spread([r["max_uploaded_bytes"] for r in runs]),
        "max_most_at_once": max(r["max_most_at_once"] for r in runs),
        "raw": runs,
    }


def run_array(bench: Bench) -> None:
    """The scenario: fixtures, the interleaved runs, ``bench.figures["array"]``."""
    model_size = MODEL_SIZE // 4 if bench.plan.quick else MODEL_SIZE
    work = bench.tmp / "array"
    bench.log(f"array: writing a model of {FILES} random files, {model_size // MiB} MiB in all")
    files = model_files(work / "origin", model_size)
    model = sum(f.size for f in files)
    order = [ALONE, PEERS, INDEPENDENT, ALONE, PEERS, TREE, ALONE, PEERS]
    order += [ALONE, PEERS] * max(0, PEER_RUNS - 3)
    runs: dict[str, list[dict[str, Any]]] = {m.key: [] for m in MODES}
    failed: set[str] = set()
    with WanOrigin(ORIGIN_RATE) as origin:
        for f in files:
            origin.add(f.name, f.path)
        for n, mode in enumerate(order):
            if mode.key in failed:
                continue
            settle_disk()
            bench.log(f"array: {mode.title}: {len(files)} files x {mode.nodes} nodes at once")

            def once(mode: Mode = mode, n: int = n) -> dict[str, Any]:
                with Cluster(work / f"run-{n}-{mode.key}", mode) as cluster:
                    return pull(cluster, origin, files)

            result = bench.attempt(SCENARIO, mode.key, once)
            if result is None:
                failed.add(mode.key)
                continue
            bench.log(
                f"array: {mode.title}: {result['seconds_all']:.2f} s, origin served "
                f"{result['origin_x_model']:.2f}x the model, most uploaded by a node "
                f"{result['max_uploaded_bytes'] / MiB:.0f} MiB"
            )
            runs[mode.key].append(result)
    figures: dict[str, Any] = {
        "model": {
            "bytes": model,
            "files": [{"name": f.name, "digest": f.digest, "size": f.size} for f in files],
            "origin_rate_MiB_per_s": ORIGIN_RATE / MiB,
            "nodes": NODES,
        }
    }
    for key, mode_runs in runs.items():
        if mode_runs and key not in failed:
            figures[key] = _summary(mode_runs)
    bench.figures[SCENARIO] = figures
    _observe(bench, figures)


def _observe(bench: Bench, figures: dict[str, Any]) -> None:
    for key in ("peers", "tree"):
        for run in figures.get(key, {}).get("raw", []):
            gets = run["origin_gets_per_file"]
            many = {name: n for name, n in gets.items() if n > 1}
            if many:
                bench.notes.append(f"array / {key}: the origin served files more than once: {many}")
            failures = sum(n["peer_failures"] for n in run["nodes"])
            if failures:
                bench.notes.append(f"array / {key}: {failures} peer failures counted")
            problems = sum(n["log_problem_lines"] for n in run["nodes"])
            if problems:
                first = next(p for n in run["nodes"] for p in n["log_problems"])
                bench.notes.append(f"array / {key}: {problems} WARNING/ERROR lines, e.g. {first}")


# -- the report -----------------------------------------------------------------------------------


def levels(nodes: int, fanout: int) -> int:
    """Levels of the tree below the owner that reach ``nodes`` - 1 other nodes."""
    reached, width, depth = 0, 1, 0
    while reached < nodes - 1:
        width *= fanout
        reached += width
        depth += 1
    return depth


def estimate(figures: dict[str, Any]) -> list[str]:
    """The written estimate for 100 and 1,000 nodes (reasoning: the module's docstring)."""
    model = figures["model"]["bytes"]
    alone = figures.get("alone", {}).get("seconds_median")
    peers = figures.get("peers", {}).get("seconds_median")
    tree = figures.get("tree", {}).get("seconds_median")
    if alone is None or peers is None:
        return ["estimate: n/a (the alone or the peers runs were not measured)"]
    one = max(peers - alone, 0.0)
    two = max(tree - peers, 0.0) / 2 if tree is not None else 0.0
    level = max(one, two, 0.05)
    rate = figures["model"]["origin_rate_MiB_per_s"]
    lines = [
        f"estimate, fan-out {FANOUT}, origin {rate:.0f} MiB/s: each blob from the origin once; "
        "a level streams while it receives, so it adds a start-up latency l, not a transfer: "
        "T(N) ~ T_alone + d(N) x l, with l <= max(T_peers - T_alone, (T_tree - T_peers) / 2) "
        f"= max({one:.2f}, {two:.2f}) = {level:.2f} s measured here (8 nodes on 2 shared CPUs); "
        f"needs a NIC upload >= {FANOUT} x {rate:.0f} MiB/s per node off loopback:"
    ]
    for n in (100, 1000):
        d = levels(n, FANOUT)
        t = alone + d * level
        lines.append(
            f"  {n:>5} nodes: {d} levels; origin serves {model / MiB:.0f} MiB "
            f"(vs {n * model / MiB / 1024:,.0f} GiB without --peers); all complete in "
            f"~ {alone:.2f} + {d} x {level:.2f} = {t:.1f} s ({t / alone:.2f}x one node alone)"
        )
    d = levels(2600, FANOUT)
    lines += [
        f"  {KRAKEN}: a swarm in the data centre, every agent uploads about as much as it "
        "downloads, T ~ S/U = 10 s.",
        f"  this tree there (U = 300 MB/s, 2,600 nodes, {d} levels): one 3 GB blob is "
        f"upload-bound at U/{FANOUT} per stream, ~80 s + {d} l; k >= {FANOUT} blobs of "
        "distinct owners: floor S/U = 10 s, paced by the busiest interior node, so 10-80 s. "
        "Behind a WAN link (this benchmark) both are origin-bound; the tree's depth costs "
        "d x l.",
    ]
    return lines


def _mib(value: float) -> str:
    return f"{value / MiB:,.0f} MiB"


def report_lines(bench: Bench) -> list[str]:
    """The side-by-side table, the spread of the ``peers`` runs, and the estimate."""
    figures = bench.figures.get(SCENARIO)
    if not figures or "model" not in figures:
        return []
    model = figures["model"]["bytes"]
    header = (
        "array: " + f"{NODES} nodes, model {_mib(model)} in {FILES} files, origin "
        f"{figures['model']['origin_rate_MiB_per_s']:.0f} MiB/s",
        "time all complete (median)",
        "origin served",
        "most uploaded by a node",
        "mostAtOnce",
        "runs",
    )
    rows: list[tuple[str, ...]] = [header]
    for mode in MODES:
        fig = figures.get(mode.key)
        if fig is None:
            rows.append((mode.title, "NOT MEASURED", "", "", "", ""))
            continue
        origin = fig["origin_bytes"]["median"]
        rows.append(
            (
                mode.title,
                f"{fig['seconds_median']:.2f} s",
                f"{_mib(origin)} ({origin / model:.2f}x)",
                _mib(fig["max_uploaded_bytes"]["max"]),
                str(fig["max_most_at_once"]),
                str(fig["runs"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for key in ("peers", "alone"):
        fig = figures.get(key)
        if fig is None:
            continue
        s = fig["seconds_all"]
        up = fig["max_uploaded_bytes"]
        lines.append(
            f"{key}: {fig['runs']} runs, time min/median/max {s['min']:.2f} / {s['median']:.2f} "
            f"/ {s['max']:.2f} s; origin {_mib(fig['origin_bytes']['min'])} / "
            f"{_mib(fig['origin_bytes']['max'])} (min/max); most uploaded "
            f"{_mib(up['min'])} / {_mib(up['median'])} / {_mib(up['max'])}"
        )
    peers, alone = figures.get("peers"), figures.get("alone")
    if peers is not None and alone is not None:
        ratio = peers["seconds_median"] / alone["seconds_median"]
        worst = peers["origin_x_model_max"]
        lines.append(
            f"targets: origin <= {ORIGIN_TARGET}x the model: {worst:.3f}x "
            f"({'met' if worst <= ORIGIN_TARGET else 'MISSED'}); all 8 <= {TIME_TARGET}x one "
            f"node: {ratio:.2f}x ({'met' if ratio <= TIME_TARGET else 'MISSED'})"
        )
    return [*lines, *estimate(figures)]


def comparisons(bench: Bench) -> list[dict[str, Any]]:
    """The two targets as rows of the main table."""
    figures = bench.figures.get(SCENARIO, {})
    model = figures.get("model", {}).get("bytes")
    peers, alone = figures.get("peers"), figures.get("alone")
    rows: list[dict[str, Any]] = []
    origin = peers["origin_bytes"]["max"] / MiB if peers else None
    rows.append(
        _row(
            f"array: origin bytes, {NODES} nodes --peers",
            "MiB",
            origin,
            "model",
            model / MiB if model else None,
            ORIGIN_TARGET,
        )
    )
    rows.append(
        _row(
            f"array: all {NODES} complete, --peers",
            "s",
            peers["seconds_median"] if peers else None,
            "1 node alone",
            alone["seconds_median"] if alone else None,
            TIME_TARGET,
        )
    )
    return rows


def _row(
    title: str, unit: str, ours: float | None, other: str, value: float | None, most: float
) -> dict[str, Any]:
    ratio = ours / value if ours is not None and value else None
    return {
        "scenario": SCENARIO,
        "title": title,
        "unit": unit,
        "storage_manager": ours,
        "other": other,
        "other_value": value,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "ratio_definition": "ours / other (lower is better)",
        "target": f"<= {most}x",
        "target_max": most,
        "met": None if ratio is None else ratio <= most,
        "measured": ratio is not None,
    }
