"""Sizes for people: one spelling (binary units, as ``ls`` and the progress
bar show them) for the CLI's output and the server's log lines."""

from __future__ import annotations


def human_size(n: int | None) -> str:
    """``587 B``, ``2.9 MiB``, ``1.2 GiB``; ``?`` when unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 entry``, ``2 entries``, ``0 interrupted downloads``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
