"""``python -m tests.bench.workers``: storage-manager with ``--workers 1``
and ``--workers 2`` (and nginx, its 2 workers, as the yardstick), side by
side on the serving scenarios of :mod:`tests.bench.run`: 1 MiB and 4 KiB
random ranges (wrk, 8 connections), HEAD (hey, 8 connections) and full
GETs (curl, 1 client, and 8 at once).

Rounds alternate the contenders (1 worker, 2 workers, nginx, then again),
so a drift of the machine hits each alike; each figure is the median of the
rounds, with the range of the rounds beside it. One command, the same
tools as the main benchmark (``wrk``, ``hey``, ``curl``, ``nginx``).

Besides the rate, each load run records the CPU time it cost: the server's
(every process of it: storage-manager's writer and readers, nginx's master
and workers, from ``/proc``) and the load generator's (``wrk``, ``hey``,
``curl``: the run's children), per request (per GiB for full GETs). On a
machine whose cores the load generator shares, those two say why a figure
stops where it does: at most ``cores / (server + client CPU per request)``
requests a second, whatever the number of workers. They also give the
estimate printed for a large node, whose clients are elsewhere (peers, the
GPUs' processes on other cores): each worker serves about
``1 / server CPU per request``, and workers share nothing on this path but
the listening socket and the page cache, so the estimate is linear in them
-- an estimate, not a measurement (memory bandwidth and the NIC bound it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench.harness import (
    WRK_SCRIPT,
    Nginx,
    cpu_busy,
    curl_get,
    machine_info,
    run_wrk,
)
from tests.bench.loads import run_hey_head
from tests.support.images import OCI_INDEX, random_file
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from tests.bench.run import Bench

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
CONNECTIONS = 8
SCENARIOS = ("range_1MiB", "range_4KiB", "head", "full_get_1", "full_get_8")


class Setup:
    """A cache with a random blob (for ranges and HEAD) and a big one (full GETs), and nginx's
    tree naming the same files."""

    def __init__(self, tmp: Path, ranged_size: int, big_size: int) -> None:
        self.cache = tmp / "cache"
        self.www = tmp / "www"
        blobs = self.cache / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (self.cache / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        (self.cache / "index.json").write_text(json.dumps(index))
        www_blobs = self.www / "v2" / "x" / "blobs"
        www_blobs.mkdir(parents=True)
        self.blobs: dict[str, tuple[str, int]] = {}
        for name, size, seed in (("ranged", ranged_size, 2), ("big", big_size, 1)):
            part = tmp / f"{name}.partial"
            digest, _ = random_file(part, size, seed=seed)
            path = blobs / digest.removeprefix("sha256:")
            part.rename(path)
            (www_blobs / digest).symlink_to(path)
            self.blobs[name] = (digest, size)
        self.script = tmp / "ranges.lua"
        self.script.write_text(WRK_SCRIPT)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in (
            os.listdir(f"/proc/{pids[i]}/task") if os.path.isdir(f"/proc/{pids[i]}") else []
        ):
            with contextlib.suppress(OSError):
                pids += [
                    int(c)
                    for c in Path(f"/proc/{pids[i]}/task/{task}/children").read_text().split()
                ]
        i += 1
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _measure_cpu(
    scenario: str, base: str, setup: Setup, duration: float, nginx: bool, pid: int
) -> dict[str, Any]:
    """:func:`_measure`, with the CPU the server and the load generator used for it."""
    server0, client0, t0 = _tree_cpu_s(pid), _children_cpu_s(), time.monotonic()
    figure = _measure(scenario, base, setup, duration, nginx)
    seconds = time.monotonic() - t0
    server, client = _tree_cpu_s(pid) - server0, _children_cpu_s() - client0
    if "requests_per_s" in figure:
        requests = figure["requests_per_s"] * seconds  # wall time includes the tools' start
        figure["server_us_per_request"] = round(1e6 * server / max(requests, 1), 1)
        figure["client_us_per_request"] = round(1e6 * client / max(requests, 1), 1)
    else:
        gib = figure["MiB_per_s"] * seconds / 1024
        figure["server_cpu_s_per_GiB"] = round(server / max(gib, 1e-9), 3)
        figure["client_cpu_s_per_GiB"] = round(client / max(gib, 1e-9), 3)
    return figure


def _measure(
    scenario: str, base: str, setup: Setup, duration: float, nginx: bool
) -> dict[str, Any]:
    prefix = "/v2/x/blobs/" if nginx else "/v2/bench/blob/blobs/"
    digest, size = setup.blobs["ranged"]
    url = base + prefix + digest
    if scenario in ("range_1MiB", "range_4KiB"):
        length = MiB if scenario == "range_1MiB" else 4096
        r = run_wrk(
            url,
            setup.script,
            mode="range",
            size=size,
            length=length,
            connections=CONNECTIONS,
            threads=2,
            duration=duration,
        )
        return {"requests_per_s": round(r.rps, 1), "MiB_per_s": round(r.bytes / r.duration_s / MiB)}
    if scenario == "head":
        h = run_hey_head(url, CONNECTIONS, duration)
        return {"requests_per_s": h["requests_per_s"]}
    big, big_size = setup.blobs["big"]
    big_url = base + prefix + big
    clients = 1 if scenario == "full_get_1" else CONNECTIONS
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: curl_get(big_url), range(clients)))
    seconds = time.monotonic() - t0
    if any(r.status != 200 or r.size != big_size for r in results):
        raise RuntimeError(f"full GET answers: {[(r.status, r.size) for r in results]}")
    return {"MiB_per_s": round(big_size * clients / seconds / MiB, 1)}


def _key(figure: dict[str, Any]) -> float:
    return float(figure.get("requests_per_s", figure.get("MiB_per_s", 0.0)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    contenders: list[tuple[str, Callable[[Setup], Any]]] = [
        ("sm_1_worker", lambda s: ServerProcess(s.cache, "--workers", "1")),
        ("sm_2_workers", lambda s: ServerProcess(s.cache, "--workers", "2")),
    ]
    if not args.no_nginx:
        contenders.append(("nginx_2_workers", lambda s: Nginx(s.cache.parent / "nginx", s.www)))
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {
        sc: {name: [] for name, _ in contenders} for sc in args.only
    }
    busy = cpu_busy(1.0)
    with tempfile.TemporaryDirectory(prefix="sm-bench-workers-", dir=args.workdir) as tmp:
        setup = Setup(Path(tmp), args.ranged_mib * MiB, args.big_mib * MiB)
        for round_ in range(args.rounds):
            for name, make in contenders:
                server = make(setup)
                server.start()
                base = server.base_url if isinstance(server, ServerProcess) else server.url
                try:
                    pid = server.proc.pid if server.proc is not None else os.getpid()
                    for scenario in args.only:
                        figure = _measure_cpu(
                            scenario, base, setup, args.duration, isinstance(server, Nginx), pid
                        )
                        figures[scenario][name].append(figure)
                        print(
                            f"[round {round_ + 1}] {scenario} {name}: {figure}",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    server.stop()
    summary: dict[str, Any] = {}
    for scenario, by_name in figures.items():
        summary[scenario] = {}
        for name, runs in by_name.items():
            values = [_key(f) for f in runs]
            if values:
                summary[scenario][name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "runs": values,
                    "unit": "requests/s" if "requests_per_s" in runs[0] else "MiB/s",
                }
                for cost in _COSTS:
                    spent = [float(f[cost]) for f in runs if cost in f]
                    if spent:
                        summary[scenario][name][cost] = statistics.median(spent)
    return {
        "machine": machine_info(REPO),
        "cpu_busy_before": round(busy, 3),
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "summary": summary,
    }


_COSTS = (
    "server_us_per_request",
    "client_us_per_request",
    "server_cpu_s_per_GiB",
    "client_cpu_s_per_GiB",
)
LARGE_NODE = 64  # cores of the node the estimate is for
DEFAULT_WORKERS_CAP = 8  # --workers auto: the number of cores, at most this


def _pair(by_name: dict[str, Any], name: str, s_key: str, c_key: str) -> str:
    f = by_name.get(name) or {}
    return f"{f[s_key]:g} / {f[c_key]:g}" if s_key in f else "-"


def cost_table(result: dict[str, Any]) -> str:
    """CPU per request (per GiB for full GETs), medians over the rounds, and
    what they allow on this machine and on a large node."""
    lines = [
        "| scenario | CPU per | storage-manager 1 worker: server / client "
        "| 2 workers: server / client | nginx: server / client "
        "| this machine's ceiling, 2 workers / nginx |",
        "|---|---|---|---|---|---|",
    ]
    cores = int(result["cores"] or 1)
    for scenario, by_name in result["summary"].items():
        per_request = any("server_us_per_request" in f for f in by_name.values())
        s_key, c_key = (
            ("server_us_per_request", "client_us_per_request")
            if per_request
            else ("server_cpu_s_per_GiB", "client_cpu_s_per_GiB")
        )

        ceiling = "-"
        two, ngx = by_name.get("sm_2_workers") or {}, by_name.get("nginx_2_workers") or {}
        if s_key in two and s_key in ngx:
            ours = cores / (two[s_key] + two[c_key])
            theirs = cores / (ngx[s_key] + ngx[c_key])
            ceiling = f"{ours / theirs:.2f}x"
        unit = "request (us)" if per_request else "GiB (CPU s)"
        lines.append(
            f"| {scenario} | {unit} | {_pair(by_name, 'sm_1_worker', s_key, c_key)} "
            f"| {_pair(by_name, 'sm_2_workers', s_key, c_key)} "
            f"| {_pair(by_name, 'nginx_2_workers', s_key, c_key)} | {ceiling} |"
        )
    return "\n".join(lines)


def estimate(result: dict[str, Any]) -> list[str]:
    """Lines estimating a large node's serving rate from the 1-worker CPU cost."""
    out = []
    workers = min(LARGE_NODE, DEFAULT_WORKERS_CAP)
    for scenario, by_name in result["summary"].items():
        one = by_name.get("sm_1_worker") or {}
        if "server_us_per_request" in one:
            per_worker = 1e6 / max(one["server_us_per_request"], 1e-9)
            size = {"range_1MiB": MiB, "range_4KiB": 4096}.get(scenario, 0)
            rate = f"{per_worker * workers:,.0f} requests/s"
            if size:
                rate += f" ({per_worker * workers * size / 1e9:.1f} GB/s)"
            out.append(
                f"- {scenario}: {per_worker:,.0f} requests/s per worker; "
                f"{LARGE_NODE} cores, {workers} workers (the default cap): {rate}; "
                f"--workers {LARGE_NODE}: {per_worker * LARGE_NODE:,.0f} requests/s"
            )
        elif "server_cpu_s_per_GiB" in one:
            gib_s = 1 / max(one["server_cpu_s_per_GiB"], 1e-9)
            out.append(
                f"- {scenario}: {gib_s:.1f} GiB/s per worker; {LARGE_NODE} cores, "
                f"{workers} workers: {gib_s * workers * 1.074:.0f} GB/s before the NIC "
                "(100 Gbit/s is 12.5 GB/s)"
            )
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | unit | 1 worker | 2 workers | 2 / 1 | nginx (2 workers) "
        "| 2 workers / nginx |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(f: dict[str, Any] | None) -> str:
        if f is None:
            return "-"
        return f"{f['median']:.0f} ({f['min']:.0f}-{f['max']:.0f})"

    for scenario, by_name in result["summary"].items():
        one, two = by_name.get("sm_1_worker"), by_name.get("sm_2_workers")
        ngx = by_name.get("nginx_2_workers")
        unit = (one or two or ngx or {}).get("unit", "")
        ratio = f"{two['median'] / one['median']:.2f}" if one and two and one["median"] else "-"
        vs = f"{two['median'] / ngx['median']:.2f}" if two and ngx and ngx["median"] else "-"
        lines.append(
            f"| {scenario} | {unit} | {cell(one)} | {cell(two)} | {ratio} | {cell(ngx)} | {vs} |"
        )
    return "\n".join(lines)


SCENARIO = "workers"


def run_in_bench(bench: Bench) -> None:
    """The curve as a scenario of ``python -m tests.bench`` (3 rounds; --quick: 1 round
    and smaller blobs)."""
    quick = bench.plan.quick
    args = argparse.Namespace(
        rounds=1 if quick else 3,
        duration=bench.plan.duration,
        ranged_mib=64 if quick else 256,
        big_mib=128 if quick else 256,
        only=list(SCENARIOS),
        no_nginx=False,
        workdir=bench.tmp,
    )
    bench.log(f"workers: 1 and 2 workers and nginx, {args.rounds} alternating rounds")
    try:
        bench.figures[SCENARIO] = {"curve": run(args)}
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        bench.fail(SCENARIO, "storage-manager", str(e))


def report_lines(bench: Bench) -> list[str]:
    """The curve's tables and the estimate, for the benchmark's report."""
    figures = bench.figures.get(SCENARIO)
    if not figures:
        return []
    result = figures["curve"]
    return [
        f"workers: 1 and 2 workers against nginx, median (range) of {result['rounds']} rounds",
        "",
        table(result),
        "",
        cost_table(result),
        "",
        f"Estimate for a {LARGE_NODE}-core node, clients elsewhere (linear in workers):",
        *estimate(result),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.workers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each load run")
    parser.add_argument("--ranged-mib", type=int, default=256, help="the ranged blob's size")
    parser.add_argument("--big-mib", type=int, default=256, help="the fully read blob's size")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--no-nginx", action="store_true", help="storage-manager only")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--workdir", type=Path, help="where the temporary files go")
    args = parser.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    result = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print()
    print(cost_table(result))
    print(f"\nEstimate for a {LARGE_NODE}-core node, clients elsewhere (linear in workers):")
    print("\n".join(estimate(result)))
    print(
        f"\n{result['cores']} cores, {result['machine'].get('cpu', '')}; machine "
        f"{result['cpu_busy_before']:.0%} busy before the run; median (range) of "
        f"{result['rounds']} rounds, {result['duration_s']:.0f} s per load run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
