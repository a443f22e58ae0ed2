"""The digest grammar: sha256 (64 hex) and sha512 (128 hex), nothing else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.cache.durable import Syncer, recover
from proxy.types import Digest, InvalidDigest


def test_sha512_digests_parse_with_their_length() -> None:
    hex512 = hashlib.sha512(b"x").hexdigest()
    d = Digest.parse("sha512:" + hex512)
    assert (d.algorithm, d.hex, str(d)) == ("sha512", hex512, "sha512:" + hex512)
    assert d == Digest.of(b"x", "sha512") == Digest(hex512, "sha512")
    assert d != Digest.parse("sha256:" + hex512[:64])
    assert Digest.from_file_name(hex512) == d
    assert Digest.from_file_name(hex512[:64]) == Digest(hex512[:64])
    assert Digest("a" * 64).algorithm == "sha256"


@pytest.mark.parametrize(
    "bad",
    [
        "sha512:" + "a" * 64,  # a sha256's length
        "sha256:" + "a" * 128,  # a sha512's length
        "sha512:" + "A" * 128,
        "sha384:" + "a" * 96,
        "sha512:" + "a" * 127,
        "sha512:",
    ],
)
def test_wrong_lengths_and_other_algorithms_are_refused(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(bad)


def test_constructing_a_digest_checks_it() -> None:
    with pytest.raises(InvalidDigest):
        Digest("a" * 64, "sha512")
    with pytest.raises(InvalidDigest):
        Digest("a" * 128, "md5")


def test_fsync_markers_of_sha512_blobs(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs" / "sha256"
    (tmp_path / "blobs" / "sha512").mkdir(parents=True)
    blobs.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    syncer = Syncer(blobs, marks)
    digest = Digest.of(b"x", "sha512")
    (tmp_path / "blobs" / "sha512" / digest.hex).write_bytes(b"x")
    syncer.mark(digest)
    found = recover(syncer)  # same boot: fsync'd again, not dropped as stray
    assert found.resynced == (digest,)
    assert syncer.flush(10)
    assert not (marks / digest.hex).exists()
