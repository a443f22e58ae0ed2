"""Targets, ratios, the printed table and the JSON document."""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.bench import array, model_ready
from tests.bench.run import (
    MEMORY_LIMIT_MIB,
    NGINX,
    REGISTRY,
    SERVING,
    SM,
    Bench,
    ingest_scenario,
    size_label,
)


@dataclasses.dataclass(frozen=True)
class Target:
    """``ours`` vs ``other`` on ``key`` of ``scenario``. Throughputs: ratio = ours / other;
    times (``time=True``): ratio = other_time / our_time, so faster is always higher.
    ``minimum`` None: shown for reference, no target."""

    scenario: str
    key: str
    other: str
    minimum: float | None
    time: bool = False


def targets(bench: Bench) -> list[Target]:
    """The issue's targets (issue 24 item 2) against nginx and ``curl -o``, and the earlier
    ones against docker-registry, oras-py and skopeo; ``None``: shown for reference."""
    ingests = [
        t
        for size in bench.plan.ingest_sizes
        for t in (
            Target(ingest_scenario(size), "seconds_median", "curl", 1.0, time=True),
            Target(ingest_scenario(size), "seconds_median", "curl+fsync", None, time=True),
        )
    ]
    return [
        Target("full_get", "MiB_per_s", NGINX, 1.0),
        Target("full_get", "MiB_per_s", REGISTRY, None),
        Target("full_get_8", "MiB_per_s", NGINX, 1.0),
        Target("full_get_8", "MiB_per_s", REGISTRY, None),
        Target("range_1MiB", "requests_per_s", NGINX, 1.0),
        Target("range_1MiB", "requests_per_s", REGISTRY, 2.0),
        Target("range_4KiB", "requests_per_s", NGINX, 0.8),
        Target("range_4KiB", "requests_per_s", REGISTRY, 5.0),
        Target("head", "requests_per_s", NGINX, 0.8),
        Target("head", "requests_per_s", REGISTRY, 5.0),
        *ingests,
        Target("oci_pull", "seconds_median", "oras-py", 3.0, time=True),
        Target("oci_pull", "seconds_median", "skopeo", 0.8, time=True),
        # The issue asks for the figure, not a ratio: serving while an ingest runs vs alone.
        Target("serve_during_ingest", "requests_per_s", f"{SM} alone", None),
    ]


UNITS = {"MiB_per_s": "MiB/s", "requests_per_s": "req/s", "seconds_median": "s"}


def titles(bench: Bench) -> dict[str, str]:
    p = bench.plan
    big = size_label(p.big_size)
    names = {
        "full_get": f"full GET {big}, 1 client ({p.get_runs} rounds)",
        "full_get_8": f"full GET {big}, {p.connections} clients ({p.runs} rounds)",
        "range_1MiB": f"1 MiB random ranges, {p.connections} conns ({p.runs} rounds)",
        "range_4KiB": f"4 KiB random ranges, {p.connections} conns ({p.runs} rounds)",
        "head": f"HEAD blob, {p.connections} conns ({p.runs} rounds)",
        "oci_pull": f"oci:// pull {p.layers} x {size_label(p.layer_size)} ({p.runs} rounds)",
        "serve_during_ingest": "1 MiB ranges during ingests (1 run)",
        "memory_serving": "RSS growth of each process (writer, readers) under the serving loads",
        "memory_ingest": "RSS growth of each process, ingest",
    }
    for size in p.ingest_sizes:
        names[ingest_scenario(size)] = (
            f"ingest of a fresh {size_label(size)} file, http:// ({p.ingest_rounds} rounds)"
        )
    return names


def _runs_key(key: str) -> str:
    return "seconds_runs" if key == "seconds_median" else f"{key}_runs"


def _value(bench: Bench, scenario: str, server: str, key: str) -> float | None:
    figure = bench.figures.get(scenario, {}).get(server)
    if figure is None or figure.get(key) is None:
        return None
    return float(figure[key])


def _runs(bench: Bench, scenario: str, server: str, key: str) -> list[float]:
    figure = bench.figures.get(scenario, {}).get(server) or {}
    return [float(v) for v in figure.get(_runs_key(key), [])]


def comparisons(bench: Bench) -> list[dict[str, Any]]:
    names = titles(bench)
    only = bench.plan.only
    rows: list[dict[str, Any]] = []
    for t in targets(bench):
        if t.scenario not in only and not (t.scenario.startswith("ingest_") and "ingest" in only):
            continue
        ours = _value(bench, t.scenario, SM, t.key)
        other = _value(bench, t.scenario, t.other, t.key)
        our_runs = _runs(bench, t.scenario, SM, t.key)
        other_runs = _runs(bench, t.scenario, t.other, t.key)
        ratio = None
        if ours and other:
            ratio = other / ours if t.time else ours / other
        # Rounds pair the contenders (same round, one after the other): the ratio of each.
        paired = [
            (o / m if t.time else m / o)
            for m, o in zip(our_runs, other_runs, strict=False)
            if m and o
        ]
        if len(our_runs) != len(other_runs):
            paired = []
        met = None if ratio is None or t.minimum is None else ratio >= t.minimum
        rows.append(
            {
                "scenario": t.scenario,
                "title": names[t.scenario],
                "unit": UNITS[t.key],
                "storage_manager": ours,
                "storage_manager_range": _range(our_runs),
                "other": t.other,
                "other_value": other,
                "other_range": _range(other_runs),
                "ratio": round(ratio, 3) if ratio is not None else None,
                "ratio_range": _range(paired),
                "ratio_definition": "other_time / our_time" if t.time else "ours / other",
                "target": f">= {t.minimum}x" if t.minimum is not None else "reference",
                "target_min": t.minimum,
                "met": met,
                "measured": ratio is not None,
            }
        )
    memory = (
        ("memory_serving", any(s in only for s in SERVING)),
        ("memory_ingest", "ingest" in only),
    )
    for scenario, ran in memory:
        if not ran:
            continue
        growth = _value(bench, scenario, SM, "growth_MiB")
        figure = bench.figures.get(scenario, {}).get(SM) or {}
        each = [float(p["growth_MiB"]) for p in figure.get("processes", [])]
        rows.append(
            {
                "scenario": scenario,
                "title": f"{names[scenario]} (largest; {len(each)} processes)",
                "unit": "MiB",
                "storage_manager": growth,
                "storage_manager_range": _range(each),
                "other": None,
                "other_value": None,
                "ratio": None,
                "ratio_definition": None,
                "target": f"< {MEMORY_LIMIT_MIB:.0f} MiB each",
                "target_max": MEMORY_LIMIT_MIB,
                "met": None if growth is None else growth < MEMORY_LIMIT_MIB,
                "measured": growth is not None,
            }
        )
    if array.SCENARIO in only:
        rows += array.comparisons(bench)
    if model_ready.SCENARIO in only:
        rows += model_ready.comparisons(bench)
    return rows


def _range(values: list[float], digits: int = 3) -> list[float] | None:
    return [round(min(values), digits), round(max(values), digits)] if values else None


def _num(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _fmt(value: float | None, unit: str, spread: list[float] | None = None) -> str:
    """``median unit (min-max)``: the range of the runs beside the median."""
    if value is None:
        return "n/a"
    text = f"{_num(value, unit)}{'x' if unit == 'x' else ' ' + unit}"
    if spread is not None and _num(spread[0], unit) != _num(spread[1], unit):
        text += f" ({_num(spread[0], unit)}-{_num(spread[1], unit)})"
    return text


def machine_line(machine: dict[str, Any]) -> str:
    mem = machine.get("memory_MiB")
    ram = f"{mem / 1024:.1f} GiB RAM" if mem else "RAM unknown"
    return (
        f"Machine: {machine['nproc']} cores, {machine['cpu']}, {ram}, "
        f"Linux {machine['kernel']}, Python {machine['python']}; "
        f"storage-manager {machine['storage_manager_revision']}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """The comparisons as a Markdown table (pasted into README.md as it is): each figure the
    median of its rounds with their range in brackets; the ratio of the medians with the
    range of the per-round ratios."""
    lines = [
        "| scenario | storage-manager | compared with | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        other = "-"
        if row["other"] is not None:
            other = (
                f"{row['other']}: {_fmt(row['other_value'], row['unit'], row.get('other_range'))}"
            )
        ratio = _fmt(row["ratio"], "x", row.get("ratio_range")) if row["ratio"] else "-"
        if row["met"] is None:
            met = "-" if row["measured"] else "NOT MEASURED"
        else:
            met = "yes" if row["met"] else "no"
        if row["target"] == "reference" and row["measured"]:
            met = "(ref)"
        ours = _fmt(row["storage_manager"], row["unit"], row.get("storage_manager_range"))
        cells = (row["title"], ours, other, ratio, row["target"], met)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def document(bench: Bench, rows: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    p = bench.plan
    return {
        "machine": machine,
        "plan": {
            "quick": p.quick,
            "scenarios": sorted(p.only),
            "big_blob_bytes": p.big_size,
            "range_blob_bytes": p.range_size,
            "layers": p.layers,
            "layer_bytes": p.layer_size,
            "load_seconds": p.duration,
            "connections": p.connections,
            "wrk_threads": p.threads,
            "runs": p.runs,
            "full_get_runs": p.get_runs,
            "ingest_bytes": list(p.ingest_sizes),
            "ingest_rounds": p.ingest_rounds,
            "load_generators": {
                "full_get": "curl -o /dev/null (time_total), median of rounds; 8 clients: 8 "
                "curls at once, bytes / wall time",
                "ranges": "wrk with a Lua request() choosing a random offset per request",
                "head": "hey -m HEAD (wrk 4.1 cannot complete HEAD answers)",
                "ingest": "POST /content/ on a fresh cache (201) vs curl -o FILE, a fresh URL "
                "each, alternating rounds, before each: outputs deleted, sync, page cache "
                "dropped, source read back in; median",
                "oci_pull": "POST /content/ oci:// on a fresh cache vs oras-py pull vs skopeo "
                "copy docker:// dir:; median",
                "memory": "VmRSS of every process of the server every 50 ms; growth = peak "
                "during load - median before it, the largest of the processes",
            },
        },
        "setup": bench.setup,
        "figures": bench.figures,
        "comparisons": rows,
        "targets_met": sum(1 for r in rows if r["met"] is True),
        "targets_missed": sum(1 for r in rows if r["met"] is False),
        "errors": bench.errors,
        "notes": bench.notes,
    }
