"""Appending a download to its file, past the page cache where the disk allows.

A buffered ``write(2)`` copies every byte into a page-cache page first. On the
machines this runs on that copy is the dearest step of an ingest: a freshly
allocated page costs more than hashing the bytes that fill it (in a VM whose
free memory goes back to the host, several times more), and a download of
tens of GB leaves as many dirty pages behind, which push the working set of
the node's inference engines out of memory and make the commit's ``fsync``
wait for all of them.

:class:`Appender` writes with ``O_DIRECT`` instead: received bytes are copied
into one page-aligned staging buffer, and whole blocks of it go from there
straight to the disk. Only a last partial block (less than :data:`ALIGN`
bytes) is ever written through the page cache, and only when the caller
asks for everything to be in the file (:meth:`Appender.flush`); the next
direct write covers that block again, with the same bytes in front.

Where the filesystem refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some FUSE
and network filesystems), the file is written the buffered way, as before.

Every method blocks: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

Buffer = bytes | bytearray | memoryview

# The alignment asked of O_DIRECT's memory, file offsets and lengths: the logical
# block size of nearly every disk (4Kn) and a multiple of the 512 of the others.
ALIGN = 4096
STAGE = 4 * 1024 * 1024  # the staging buffer; a multiple of ALIGN

_O_DIRECT = getattr(os, "O_DIRECT", 0)
# What open(2) or write(2) answer on a filesystem (or a block size) O_DIRECT can't use.
_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    """Write every byte of ``data`` at ``offset``."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view, offset = view[n:], offset + n


class Appender:
    """Writes one file front to back, from ``start`` on.

    :attr:`offset` counts the bytes given to :meth:`write`; :attr:`written`
    the bytes already in the file (readable by others: a mirror's client is
    served from there). The two differ by what sits in the staging buffer,
    less than :data:`ALIGN` bytes after each :meth:`write` and none after
    :meth:`flush`.
    """

    def __init__(self, path: Path, start: int, direct: bool = True) -> None:
        """Open ``path`` to continue at byte ``start`` (0: a new, empty file);
        ``direct``: write past the page cache where the filesystem allows."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if start == 0 else 0)
        self._fd = os.open(path, flags, 0o644)
        self._direct_fd: int | None = None
        self._stage: mmap.mmap | None = None
        self.offset = self.written = start
        self._base = start  # the file offset of the staging buffer's first byte
        self._fill = 0  # bytes in the staging buffer
        if direct and _O_DIRECT:
            try:
                self._direct_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT)
            except OSError as e:
                if e.errno not in _REFUSED:
                    self.close()
                    raise
        if self._direct_fd is None:
            return
        try:
            self._stage = mmap.mmap(-1, STAGE)  # anonymous: page-aligned
            # Continue on a block boundary: the start of the last partial block is
            # read back into the buffer, and written again with what follows it.
            self._base = start - start % ALIGN
            self._fill = start - self._base
            if self._fill:
                got = os.preadv(self._fd, [memoryview(self._stage)[: self._fill]], self._base)
                if got != self._fill:
                    raise OSError(errno.EIO, f"{path} is shorter than {start} bytes")
        except BaseException:
            self.close()
            raise

    @property
    def direct(self) -> bool:
        """True while bytes go past the page cache."""
        return self._direct_fd is not None

    def write(self, chunks: Sequence[Buffer]) -> None:
        """Append ``chunks``, one after the other: whole blocks reach the file
        now, less than one block may stay in the staging buffer (see
        :meth:`flush`). The more bytes per call, the larger the writes."""
        if self._stage is None:
            for chunk in chunks:
                _pwrite_all(self._fd, chunk, self.offset)
                self.offset = self.written = self.offset + memoryview(chunk).nbytes
            return
        stage = memoryview(self._stage)
        for i, chunk in enumerate(chunks):
            view = memoryview(chunk).cast("B")
            while view:
                n = min(len(view), STAGE - self._fill)
                stage[self._fill : self._fill + n] = view[:n]
                self._fill += n
                self.offset += n
                view = view[n:]
                if self._fill == STAGE:
                    self._write_blocks()
                    if self._stage is None:  # O_DIRECT was refused just now
                        self.write([view, *chunks[i + 1 :]])
                        return
        self._write_blocks()

    def _write_blocks(self) -> None:
        """Write the staging buffer's whole blocks to the file (O_DIRECT) and
        keep the rest at its front."""
        assert self._stage is not None
        whole = self._fill - self._fill % ALIGN
        if not whole:
            return
        stage = memoryview(self._stage)
        try:
            assert self._direct_fd is not None
            _pwrite_all(self._direct_fd, stage[:whole], self._base)
        except OSError as e:
            if e.errno not in _REFUSED:
                raise
            self._buffered_from_now_on()
            return
        rest = self._fill - whole
        stage[:rest] = stage[whole : self._fill]
        self._base += whole
        self._fill = rest
        self.written = max(self.written, self._base)

    def _write_staged_buffered(self) -> None:
        """Write what is staged through the page cache (it stays staged too)."""
        assert self._stage is not None
        _pwrite_all(self._fd, memoryview(self._stage)[: self._fill], self._base)
        self.written = self._base + self._fill

    def _buffered_from_now_on(self) -> None:
        """O_DIRECT was refused mid-file (a block size larger than ALIGN, say):
        write what is staged, and all that follows, the buffered way."""
        self._write_staged_buffered()
        self._close_direct()

    def flush(self) -> None:
        """Put every byte given so far into the file (the last partial block
        through the page cache). Not an fsync."""
        if self._stage is None:
            return
        self._write_blocks()
        if self._stage is not None and self._fill:
            # Kept in the buffer too: the next direct write starts with this block.
            self._write_staged_buffered()

    def fsync(self) -> None:
        os.fsync(self._fd)

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._direct_fd)
            self._direct_fd = None
        # Not closed: a view of it may still be alive up the stack; freed with
        # the last reference.
        self._stage = None

    def close(self) -> None:
        """Close the file; what :meth:`flush` did not write is dropped (a resume
        continues from what the file holds)."""
        self._close_direct()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def supported(directory: Path) -> bool:
    """Whether files in ``directory`` can be written with O_DIRECT (a one-block
    probe file, removed again)."""
    if not _O_DIRECT:
        return False
    probe = directory / f".direct-probe-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _O_DIRECT
    try:
        fd = os.open(probe, flags, 0o600)  # (some filesystems create it, then refuse)
        try:
            os.pwrite(fd, mmap.mmap(-1, ALIGN), 0)
        finally:
            os.close(fd)
        return True
    except OSError as e:
        if e.errno in _REFUSED:
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
