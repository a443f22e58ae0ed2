"""Cluster single flight: who is fetching a blob from its origin right now.

Before a node fetches blob ``<hex>`` from the origin it *acquires* the lease
``leases/sha256/<hex>``: a create-only conditional write of a small record
(the holder's address, when the lease expires). One node wins; the others
are told who holds it, and wait for the blob to appear in the store or
stream it from the holder. A lease past its expiry (its holder died) is
*taken over* with a conditional overwrite naming the ETag (GCS: generation)
it was read with, so of two nodes taking over the same expired lease one
wins. A record that is not a lease this project writes (garbage, or too
large) counts as expired. The holder *renews* it while the fetch runs and
*releases* it after (a delete conditional on its own etag: a lease taken
over meanwhile is left alone).

Expiry is wall-clock seconds since the epoch (nodes' clocks roughly agree;
the TTL covers the difference), read from the injected ``clock``.

:func:`supports_conditional_writes` runs at start-up: a probe object is
created twice (the second must be refused) and overwritten with a wrong
etag (must be refused too). A store that accepts either (gcp-storage-emulator
ignores ``ifGenerationMatch``; some S3-compatible stores ignore
``If-None-Match``) cannot give single flight: the caller logs it and goes
without.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from proxy.fetch.base import Job
from proxy.shared.location import lease_key, probe_key
from proxy.shared.store import SharedStore
from proxy.types import Digest

MAX_LEASE = 4096
_HOLDER_RE = re.compile(r"[\x21-\x7e]{1,300}")
_NONCE_RE = re.compile(r"[0-9a-f]{16,64}")
_FIELDS = frozenset({"version", "holder", "expires", "nonce"})


class InvalidLease(ValueError):
    """A leases/ object that is not a lease record."""


@attrs.frozen
class LeaseRecord:
    """What a lease object holds: who holds it, until when."""

    holder: str  # the holder's address, as peers reach it (host:port)
    expires: float  # seconds since the epoch
    # Random per write: S3's ETag is the MD5 of the bytes, so two writes of the
    # same holder and expiry would have one ETag and If-Match could not tell them apart.
    nonce: str = attrs.field(factory=lambda: os.urandom(8).hex())

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.holder, str) or not _HOLDER_RE.fullmatch(self.holder):
            raise InvalidLease("lease holder must be printable ASCII without spaces")
        if not isinstance(self.expires, (int, float)) or not math.isfinite(self.expires):
            raise InvalidLease("lease expiry must be a finite number")
        if not isinstance(self.nonce, str) or not _NONCE_RE.fullmatch(self.nonce):
            raise InvalidLease("lease nonce must be 16 to 64 hex digits")

    def to_bytes(self) -> bytes:
        doc = {
            "version": 1,
            "holder": self.holder,
            "expires": round(self.expires, 3),
            "nonce": self.nonce,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        if len(data) > MAX_LEASE:
            raise InvalidLease("lease record too large")
        try:
            doc: Any = json.loads(data)
        except (ValueError, RecursionError):
            raise InvalidLease("lease record is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != _FIELDS:
            raise InvalidLease("lease record fields are not version/holder/expires/nonce")
        expires = doc["expires"]
        if doc["version"] != 1 or isinstance(expires, bool) or isinstance(doc["version"], bool):
            raise InvalidLease("lease record of another version")
        if not isinstance(expires, (int, float)):
            raise InvalidLease("lease expiry must be a number")
        return cls(doc["holder"], float(expires), doc["nonce"])


@attrs.frozen
class Lease:
    """A lease this node holds (``etag`` names its current version)."""

    digest: Digest
    record: LeaseRecord
    etag: str


@attrs.frozen
class Held:
    """Someone else's lease: wait for the blob, or stream it from ``record.holder``."""

    digest: Digest
    record: LeaseRecord | None  # None: the object is not a readable lease
    etag: str


class Leases:
    """Leases on one store, taken as ``holder`` for ``ttl`` seconds."""

    def __init__(
        self, store: SharedStore, clock: IReactorTime, holder: str, ttl: float = 120.0
    ) -> None:
        LeaseRecord(holder, 0.0)  # checks the address
        self.store = store
        self.clock = clock
        self.holder = holder
        self.ttl = ttl

    def _record(self) -> LeaseRecord:
        return LeaseRecord(self.holder, self.clock.seconds() + self.ttl)

    async def acquire(self, digest: Digest, job: Job | None = None) -> Lease | Held:
        """The lease on ``digest``: created, or taken over from an expired
        holder (or from this node's own earlier life); else who holds it."""
        key = lease_key(digest)
        for _ in range(3):
            record = self._record()
            etag = await self.store.create_if_absent(key, record.to_bytes(), job)
            if etag:
                return Lease(digest, record, etag)
            found = await self.store.read_small(key, MAX_LEASE + 1, job)
            if found is None:
                continue  # released between the two requests: try again
            try:
                current: LeaseRecord | None = LeaseRecord.from_bytes(found.data)
            except InvalidLease:
                current = None
            live = current is not None and current.expires > self.clock.seconds()
            if live and current is not None and current.holder != self.holder:
                return Held(digest, current, found.etag)
            # Expired, unreadable, or ours from before a restart: overwrite it,
            # on the condition that it is still what was read.
            record = self._record()
            taken = await self.store.replace_if_match(key, record.to_bytes(), found.etag, job)
            if taken:
                return Lease(digest, record, taken)
        found = await self.store.read_small(key, MAX_LEASE + 1, job)
        if found is None:
            return Held(digest, None, "")
        try:
            return Held(digest, LeaseRecord.from_bytes(found.data), found.etag)
        except InvalidLease:
            return Held(digest, None, found.etag)

    async def renew(self, lease: Lease, job: Job | None = None) -> Lease | None:
        """The lease with a new expiry; None when it is no longer ours."""
        record = self._record()
        key = lease_key(lease.digest)
        etag = await self.store.replace_if_match(key, record.to_bytes(), lease.etag, job)
        return Lease(lease.digest, record, etag) if etag else None

    async def release(self, lease: Lease, job: Job | None = None) -> bool:
        """Delete the lease if it is still ours; whether it was."""
        return await self.store.delete(lease_key(lease.digest), lease.etag, job)


@attrs.frozen
class ConditionalWrites:
    """What the start-up probe found."""

    create_only: bool  # a second create-only write of one key was refused
    if_match: bool  # an overwrite naming a wrong etag was refused

    @property
    def supported(self) -> bool:
        return self.create_only and self.if_match

    def describe(self) -> str:
        if self.supported:
            return "conditional writes work: cluster single flight through leases"
        missing = [
            name
            for name, ok in (("create-only", self.create_only), ("if-match", self.if_match))
            if not ok
        ]
        return (
            f"the shared store ignores {' and '.join(missing)} conditional writes: "
            "no cluster single flight (every node may fetch from the origin)"
        )


async def supports_conditional_writes(
    store: SharedStore, job: Job | None = None
) -> ConditionalWrites:
    """Probe ``store`` (see the module docstring); the probe object is removed."""
    key = probe_key(os.urandom(16).hex())
    first = await store.create_if_absent(key, b"probe 1", job)
    if not first:
        raise ValueError("the shared store refused to create a new probe object")
    try:
        second = await store.create_if_absent(key, b"probe 2", job)
        now = await store.head(key, job)
        wrong = "1" if first != "1" else "2"  # a generation, an etag: neither is the object's
        wrong = f'"{wrong * 32}"' if not first.isdigit() else wrong
        current = now.etag if now is not None else first
        overwritten = await store.replace_if_match(key, b"probe 3", wrong, job)
        after = await store.head(key, job)
        if_match = overwritten is None and (after is None or after.etag == current)
        return ConditionalWrites(create_only=second is None, if_match=if_match)
    finally:
        await store.delete(key, None, job)
