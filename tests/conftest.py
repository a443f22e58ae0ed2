"""Shared fixtures: a real server process and a real local HTTP source."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.source import Source


def b64(url: str, urlsafe: bool = False, pad: bool = True) -> str:
    raw = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(url.encode()).decode()
    return raw if pad else raw.rstrip("=")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def source() -> Iterator[Source]:
    with Source() as s:
        yield s


@pytest.fixture
def server(cache_dir: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(cache_dir, "--retries", "1", "--verbose", "1")
    with srv:
        yield srv
