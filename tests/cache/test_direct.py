"""Downloads written past the page cache (O_DIRECT): the bytes in the file, resumes, the
fall back to buffered writes, and what the running server does with it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cache import direct
from proxy.cache.direct import ALIGN, Appender
from proxy.cache.ingest import IngestFile
from proxy.cache.layout import Layout
from proxy.types import Digest
from tests.cache.test_durable import (
    download,
    markers,
    paused_before_the_rename,
    post_and_leave,
    wait_until,
)
from tests.support.server import ServerProcess
from tests.support.source import Source

O_DIRECT = getattr(os, "O_DIRECT", 0)


@pytest.fixture(scope="module")
def direct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("direct")
    if not direct.supported(where):
        pytest.skip(f"the filesystem of {where} refuses O_DIRECT")
    return where


def fresh(directory: Path, name: str) -> Path:
    path = directory / name
    path.unlink(missing_ok=True)
    return path


# One step of a writer: bytes to append (sizes around the block and a small staging
# buffer, so whole-buffer writes, partial blocks and exact fits all happen), a flush,
# or closing and opening again where the file ends (what a retry or a restart does).
steps = st.lists(
    st.one_of(
        st.lists(st.integers(0, 3 * ALIGN + 7), min_size=1, max_size=4).map(lambda s: ("w", s)),
        st.just(("flush", None)),
        st.just(("reopen", None)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps, use_direct=st.booleans())
def test_the_file_holds_exactly_what_was_written(
    direct_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, Any]],
    use_direct: bool,
) -> None:
    monkeypatch.setattr(direct, "STAGE", 4 * ALIGN)  # fills up within a few steps
    real_pwrite = os.pwrite

    def aligned_pwrite(fd: int, data: Any, offset: int) -> int:
        # ext4 would take a misaligned O_DIRECT write (through the page cache, then
        # dropped from it): only the alignment itself says each one is a direct write.
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            assert offset % ALIGN == 0 and memoryview(data).nbytes % ALIGN == 0
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", aligned_pwrite)
    path = fresh(direct_dir, "prop.bin")
    expected = bytearray()
    out = Appender(path, 0, use_direct)
    assert out.direct == use_direct
    try:
        for kind, sizes in steps:
            if kind == "w":
                chunks = [os.urandom(n) for n in sizes]
                out.write(chunks)
                for c in chunks:
                    expected += c
            elif kind == "flush":
                out.flush()
                assert out.written == out.offset == len(expected)
            else:
                out.close()
                expected = expected[: path.stat().st_size]  # what was not flushed is gone
                out = Appender(path, len(expected), use_direct)
            assert out.offset == len(expected)
            assert out.direct == use_direct  # never fell back to buffered writes
            assert out.offset - out.written < (ALIGN if use_direct else 1)
            # Whatever a reader of the file sees is right, up to what it was told is there.
            assert path.read_bytes()[: out.written] == expected[: out.written]
        out.flush()
        assert path.read_bytes() == expected
    finally:
        out.close()


def cached_bytes(path: Path) -> int:
    """How much of the file is in the page cache (util-linux's fincore: mincore(2))."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux's fincore is missing")
@pytest.mark.parametrize("start", [0, ALIGN + 5])
def test_direct_writes_leave_the_page_cache_alone(direct_dir: Path, start: int) -> None:
    """The point of it: downloads do not fill the page cache, whether the file starts
    empty or a resume continues in the middle of a block."""
    path = fresh(direct_dir, "cold.bin")
    head = os.urandom(start)
    path.write_bytes(head)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the head out of the page cache
    os.close(fd)
    out = Appender(path, start)
    body = os.urandom(64 * ALIGN + 100)
    for i in range(0, len(body), 3000):
        out.write([body[i : i + 3000]])
    out.flush()
    out.fsync()
    out.close()
    cached = cached_bytes(path)
    assert cached <= 2 * ALIGN, f"{cached} bytes of {start + len(body)} in the page cache"
    assert path.read_bytes() == head + body
    buffered = fresh(direct_dir, "warm.bin")
    out = Appender(buffered, 0, direct=False)
    out.write([body])
    out.close()
    assert cached_bytes(buffered) >= len(body) - ALIGN  # the check can tell the two apart


def test_a_filesystem_that_refuses_o_direct_gets_buffered_writes(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: Any, flags: int, *a: Any) -> int:
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", refusing)
    assert not direct.supported(direct_dir)
    path = fresh(direct_dir, "refused.bin")
    data = os.urandom(3 * ALIGN + 5)
    out = Appender(path, 0)
    assert not out.direct
    out.write([data[:100], data[100:]])
    assert out.written == len(data)  # buffered: in the file at once
    out.close()
    assert path.read_bytes() == data


def test_o_direct_refused_in_mid_file_goes_on_buffered(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write can be refused where the open was not (a larger block size, say)."""
    path = fresh(direct_dir, "midway.bin")
    out = Appender(path, 0)
    assert out.direct
    first = os.urandom(2 * ALIGN)
    out.write([first])
    direct_fd = out._direct_fd
    real_pwrite = os.pwrite

    def refusing(fd: int, data: Any, offset: int) -> int:
        if fd == direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    rest = os.urandom(direct.STAGE + 3 * ALIGN + 11)  # fills the staging buffer: refused
    out.write([rest[:10], rest[10:]])
    assert not out.direct
    assert out.written == out.offset == len(first) + len(rest)
    out.close()
    assert path.read_bytes() == first + rest


def test_an_ingest_resumed_at_an_odd_size_has_the_right_digest(direct_dir: Path) -> None:
    layout = Layout(direct_dir / "cache")
    layout.create()
    data = os.urandom(5 * ALIGN + 123)
    ingest = IngestFile(layout, "a" * 64)
    ingest.open(resume=False)
    ingest.write(data[: 2 * ALIGN + 77])  # a partial block at the end
    ingest.close()  # flushed: a resume continues after every byte
    assert ingest.bytes_on_disk() == 2 * ALIGN + 77
    again = IngestFile(layout, "a" * 64)
    assert again.open(resume=True) == 2 * ALIGN + 77
    again.write(data[2 * ALIGN + 77 :])
    digest, size = again.finish()
    assert (digest, size) == (Digest(hashlib.sha256(data).hexdigest()), len(data))
    assert again.data_path.read_bytes() == data


def test_a_direct_ingest_is_fsynced_before_the_rename_and_leaves_no_marker(
    direct_dir: Path,
) -> None:
    layout = Layout(direct_dir / "cache2").with_deferred_sync()
    layout.create()
    data = os.urandom(3 * ALIGN + 1)
    ingest = IngestFile(layout, "b" * 64)
    ingest.open(resume=False)
    ingest.write(data)
    digest, _ = ingest.finish()
    assert ingest.commit(digest)
    assert list(layout.unsynced_dir.iterdir()) == []
    assert layout.blob_path(digest).read_bytes() == data


# -- the running server --------------------------------------------------------------------


def data_fd_flags(pid: int) -> Iterator[int]:
    """The open(2) flags of every descriptor the server holds on an ingest data file."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if "/ingest/" in target and target.endswith("/data"):
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            yield int(fields["flags"].strip(), 8)


def writing_server(cache: Path, source: Source, *args: str) -> ServerProcess:
    """A server stopped for good after the first write of a download (killed by the caller)."""
    source.add_file("/w.bin", os.urandom(8 * 1024 * 1024))
    env = {"NEKKO_FAULT_PAUSE": "ingest-write"}
    srv = ServerProcess(cache, "--retries", "0", *args, env=env).start()
    post_and_leave(srv, source.url("/w.bin"))
    wait_until(lambda: any("fault point ingest-write reached" in x for x in srv.lines))
    return srv


def test_the_server_writes_downloads_with_o_direct(
    direct_dir: Path, tmp_path: Path, source: Source
) -> None:
    srv = writing_server(tmp_path / "cache", source, "--direct-writes")
    try:
        assert any("past the page cache (O_DIRECT)" in x for x in srv.lines), srv.log()
        assert srv.proc is not None
        flags = list(data_fd_flags(srv.proc.pid))
        assert any(f & O_DIRECT for f in flags), flags
    finally:
        srv.kill()


def _writes_through_the_page_cache(srv: ServerProcess) -> None:
    """``srv``, writing a download, says so and no descriptor of it uses
    O_DIRECT; then it is killed."""
    try:
        assert any("written through the page cache (the default" in x for x in srv.lines)
        assert srv.proc is not None
        flags = list(data_fd_flags(srv.proc.pid))
        assert flags and not any(f & O_DIRECT for f in flags), flags
    finally:
        srv.kill()


def test_buffered_writes_opens_no_o_direct_descriptor(tmp_path: Path, source: Source) -> None:
    _writes_through_the_page_cache(writing_server(tmp_path / "cache", source, "--buffered-writes"))


def test_a_direct_download_is_fsynced_before_its_rename(
    direct_dir: Path, tmp_path: Path, source: Source
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source.add_file("/d.bin", data)
    cache = tmp_path / "cache"
    with paused_before_the_rename(cache, source.url("/d.bin"), "--direct-writes"):
        assert markers(cache) == []  # fsync'd already: nothing for the syncer to do
    # The kill at that point is survived, as ever.
    with ServerProcess(cache, "--direct-writes") as srv:
        entry = download(srv, source.url("/d.bin"))
        assert entry["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert markers(cache) == []
    assert (cache / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_downloads_are_written_through_the_page_cache_by_default(
    direct_dir: Path, tmp_path: Path, source: Source
) -> None:
    """The default write mode, chosen by time to model ready (issue 23, tests/bench
    model_ready): even where the filesystem allows O_DIRECT, no descriptor uses it."""
    _writes_through_the_page_cache(writing_server(tmp_path / "cache", source))
