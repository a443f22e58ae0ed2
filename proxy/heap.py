"""Giving the C heap's free memory back to the system after a large load.

Loading a cache of 100,000 entries reads as many manifests, each a few hundred
bytes above what Python's own allocator serves, so they come from the C heap
(glibc's malloc) and are freed at once. glibc keeps such freed memory for
later, and gives back only what lies at the very top of its heap: the rest
stays in the process's resident memory (about 0.1 KiB an entry) until
``malloc_trim`` returns its free pages. Elsewhere than glibc: nothing to do.
"""

from __future__ import annotations

import ctypes


def trim() -> None:
    """Return the C heap's free pages to the system (glibc); blocking: it
    walks the heap (about 0.15 s after a load of 100,000 entries)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    malloc_trim(0)
