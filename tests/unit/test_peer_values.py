"""The cache array's small values, property-tested: the origin request a peer
sends (untrusted: any bytes decode to a checked value or a BadRequest, and a
value survives the round trip) and the fan-out bound (whatever the order of
admits and ends, no blob has more than ``limit`` streams unless a request
insists, and redirects go only to holders other than the asker)."""

from __future__ import annotations

import base64
import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadRequest
from proxy.service.fanout import Fanout
from proxy.service.forward import Origin
from proxy.types import Digest

_hosts = st.sampled_from(["127.0.0.1", "[::1]", "registry.example", "10.0.0.7", "h-1.b_c"])
_ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_paths = st.text(st.sampled_from("abc/%20?&=[]:@~.-_"), max_size=40)
_urls = st.builds(
    lambda s, h, p, q: f"{s}://{h}{p}/{q}",
    st.sampled_from(["http", "https"]),
    _hosts,
    _ports,
    _paths,
)
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)
_origins = st.builds(
    Origin,
    url=_urls,
    name=_header_text,
    authorization=st.one_of(st.none(), _header_text),
    headers=st.lists(
        st.tuples(st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True), _header_text), max_size=5
    ).map(tuple),
    if_match=st.one_of(st.none(), _header_text),
    size=st.one_of(st.none(), st.integers(0, 2**53 - 1)),
)


@given(_origins)
def test_an_origin_request_survives_the_round_trip(origin: Origin) -> None:
    assert Origin.decode(origin.encode()) == origin
    assert repr(origin) == f"Origin(name={origin.name!r}, size={origin.size!r})"  # no secret


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_an_origin_or_a_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequest):
        Origin.decode(data)


_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["url", "name", "authorization", "headers", "ifMatch", "size", "x"]),
        _values,
    )
)
def test_hostile_json_is_a_bad_request_or_a_checked_origin(doc: dict[str, object]) -> None:
    data = base64.urlsafe_b64encode(json.dumps(doc).encode())
    try:
        origin = Origin.decode(data)
    except BadRequest:
        return
    assert origin.url.startswith(("http://", "https://"))
    assert origin.size is None or 0 <= origin.size < 2**53
    for name, value in origin.headers:
        assert "\r" not in value and "\n" not in value and name


def test_an_origin_request_too_large_is_refused() -> None:
    big = Origin("http://h/" + "a" * 8000, "n", authorization="x" * 8000)
    try:
        Origin.decode(big.encode())
    except BadRequest as e:
        assert "larger" in e.message
    else:
        raise AssertionError("a 16 KiB+ origin request was accepted")


PEERS = [f"127.0.0.{i}:80" for i in range(1, 9)]
D = Digest("ab" * 32)


@given(
    st.integers(1, 4),
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(PEERS), st.booleans(), st.booleans()), max_size=60
    ),
)
def test_fan_out_holds_its_limit_and_redirects_to_other_holders(
    limit: int, steps: list[tuple[bool, str, bool, bool]]
) -> None:
    """Beyond ``limit`` streams, a request is served only when it insists or no
    other peer holds the blob; a redirect names a holder that is not the asker."""
    fanout = Fanout(limit, lambda a: a in PEERS)
    open_streams: list[str] = []
    holders: set[str] = set()
    for start, peer, insist, ok in steps:
        if start or not open_streams:
            target = fanout.admit(D, peer, insist)
            if target is None:
                if len(open_streams) >= limit:
                    assert insist or not (holders - {peer})
                open_streams.append(peer)
                holders.add(peer)
            else:
                assert target != peer and target in holders
                assert len(open_streams) >= limit and not insist
        else:
            peer = open_streams.pop(0)
            fanout.done(D, peer, ok)
            if not ok:
                holders.discard(peer)
        assert fanout.streams() == len(open_streams)
