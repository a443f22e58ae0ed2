"""Bounded fan-out: a node streams one blob to at most ``--peer-fanout``
peers at once, and redirects the next ones to a peer that already holds or
is streaming it, so a thousand nodes form a tree, not a star.

The owner knows who holds a blob because they fetched it from the owner:
every peer that streams it from this node is recorded as a holder (its
address as the ``X-Nekko-Peer`` header names it, kept only when it is a peer
this node knows). A redirect goes to the holder that was sent the fewest so
far. A holder streams from its own source while it serves the ones sent to
it, and applies the same bound, so the tree grows a level wherever a node is
full. A request marked ``X-Nekko-No-Redirect`` (a holder failed it) is served
whatever the count: the bound yields to progress.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from proxy.types import Digest

MAX_HOLDERS = 64  # holders remembered per blob
MAX_BLOBS = 4096  # blobs whose holders are remembered


@attrs.define
class _Blob:
    streams: dict[str, int] = attrs.field(factory=dict)  # peer -> streams now
    holders: dict[str, int] = attrs.field(factory=dict)  # peer -> redirects sent to it


@attrs.define
class Fanout:
    """Streams of each blob to peers now, and who holds what."""

    limit: int
    is_peer: Callable[[str], bool]
    _blobs: dict[Digest, _Blob] = attrs.field(factory=dict)
    most: int = 0  # the most streams of one blob at once, ever

    def admit(self, digest: Digest, peer: str | None, insist: bool) -> str | None:
        """None: serve it (a stream is counted until :meth:`done`); else the
        holder to redirect to."""
        blob = self._blobs.get(digest)
        if blob is None:
            if len(self._blobs) >= MAX_BLOBS:
                self._forget_idle()
            blob = self._blobs[digest] = _Blob()
        now = sum(blob.streams.values())
        if now >= self.limit and not insist:
            holders = [h for h in blob.holders if h != peer]
            if holders:
                target = min(holders, key=lambda h: blob.holders[h])
                blob.holders[target] += 1
                return target
        key = peer or ""
        blob.streams[key] = blob.streams.get(key, 0) + 1
        self.most = max(self.most, now + 1)
        if peer is not None and self.is_peer(peer) and len(blob.holders) < MAX_HOLDERS:
            blob.holders.setdefault(peer, 0)
        return None

    def done(self, digest: Digest, peer: str | None, ok: bool) -> None:
        """A stream ended; a peer that failed is no holder."""
        blob = self._blobs.get(digest)
        if blob is None:
            return
        key = peer or ""
        left = blob.streams.get(key, 0) - 1
        if left > 0:
            blob.streams[key] = left
        else:
            blob.streams.pop(key, None)
        if not ok and peer is not None:
            blob.holders.pop(peer, None)

    def streams(self) -> int:
        """Streams to peers now, all blobs."""
        return sum(sum(b.streams.values()) for b in self._blobs.values())

    def _forget_idle(self) -> None:
        for digest in [d for d, b in self._blobs.items() if not b.streams]:
            del self._blobs[digest]
