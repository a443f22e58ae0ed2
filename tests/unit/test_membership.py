"""Membership of the cache array, in-process with a Clock: ownership by
rendezvous hashing exactly as the README writes it down, liveness (a failed
peer is left alone 10 s), dns: peers re-resolved every 30 s, and the
configuration rules (a peer beyond loopback needs the cluster token)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from proxy import config
from proxy.service.membership import (
    REFRESH,
    RETRY_AFTER,
    Membership,
    PeerSpec,
    PeerSpecError,
    owner,
    parse_peers,
    rendezvous,
)

DIGEST = "sha256:" + "ab" * 32


def test_the_owner_is_the_largest_sha256_of_address_and_digest() -> None:
    nodes = ["10.0.0.7:8050", "10.0.0.8:8050", "10.0.0.9:8050"]
    weights = {n: hashlib.sha256(f"{n}|{DIGEST}".encode()).hexdigest() for n in nodes}
    assert owner(DIGEST, nodes) == max(nodes, key=lambda n: weights[n])
    assert rendezvous(DIGEST, nodes) == sorted(nodes, key=lambda n: weights[n], reverse=True)


@given(st.lists(st.from_regex(r"10\.0\.[0-9]{1,2}\.[0-9]{1,2}:8050", fullmatch=True), min_size=2))
def test_only_the_digests_a_leaving_peer_owned_move(nodes: list[str]) -> None:
    nodes = sorted(set(nodes))
    if len(nodes) < 2:
        return
    gone = nodes[0]
    for i in range(50):
        digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
        before = owner(digest, nodes)
        after = owner(digest, [n for n in nodes if n != gone])
        assert after == before or before == gone


def test_parse_peers() -> None:
    assert parse_peers("10.0.0.7:8050, dns:sm.ns.svc:8050,[::1]:9000") == (
        PeerSpec("10.0.0.7", 8050),
        PeerSpec("sm.ns.svc", 8050, dns=True),
        PeerSpec("::1", 9000),
    )
    assert PeerSpec("::1", 9000).address == "[::1]:9000"
    for bad in ("10.0.0.7", "host:0", "host:99999", "dns:name", ":8050", "a:b:c:8050"):
        with pytest.raises(PeerSpecError):
            parse_peers(bad)


def test_self_is_left_out_and_a_failed_peer_is_retried_after_10_s() -> None:
    clock = Clock()
    m = Membership(clock, parse_peers("127.0.0.1:1,127.0.0.2:2,127.0.0.3:3"), "127.0.0.2:2")
    assert m.addresses() == ["127.0.0.1:1", "127.0.0.3:3"]
    assert sorted(m.live()) == ["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"]
    m.failed("127.0.0.3:3", "connection refused")
    assert "127.0.0.3:3" not in m.live()
    assert m.order(DIGEST) == ["127.0.0.1:1"]
    down = {p["address"]: p for p in m.to_json()["peers"]}["127.0.0.3:3"]
    assert down["state"] == "down" and down["lastError"] == "connection refused"
    clock.advance(RETRY_AFTER - 0.1)
    assert "127.0.0.3:3" not in m.live()
    clock.advance(0.1)
    assert "127.0.0.3:3" in m.live()
    assert {p["state"] for p in m.to_json()["peers"]} == {"up"}


def test_dns_peers_are_every_answer_re_resolved_every_30_s() -> None:
    clock = Clock()
    answers = {"sm.svc": ["127.0.0.7", "127.0.0.8", "10.0.0.1"]}
    asked: list[str] = []

    def resolve(name: str, port: int) -> Deferred[list[str]]:
        asked.append(name)
        return succeed(list(answers[name]))

    m = Membership(clock, parse_peers("dns:sm.svc:8050"), "127.0.0.8:8050", resolve)
    m.start()
    # This node's own answer left out; so is one beyond loopback (no TLS between nodes yet).
    assert m.addresses() == ["127.0.0.7:8050"]
    answers["sm.svc"] = ["127.0.0.7", "127.0.0.8", "127.0.0.9"]
    clock.advance(REFRESH - 1)
    assert m.addresses() == ["127.0.0.7:8050"]
    clock.advance(1)
    assert m.addresses() == ["127.0.0.7:8050", "127.0.0.9:8050"]
    answers["sm.svc"] = ["127.0.0.9"]
    clock.advance(REFRESH)
    assert m.addresses() == ["127.0.0.9:8050"]
    assert len(asked) == 3
    m.stop()


def test_peers_are_on_loopback_and_a_dns_name_needs_the_cluster_token() -> None:
    """Plain HTTP between peers only on loopback: TLS between nodes is not there yet."""
    with pytest.raises(config.ConfigError, match="need TLS between nodes"):
        config.build({"peers": "10.0.0.7:8050"}, environ={"NEKKO_CLUSTER_TOKEN": "t"})
    with pytest.raises(config.ConfigError, match="cluster token"):
        config.build({"peers": "dns:sm.svc:8050"}, environ={})
    built = config.build({"peers": "127.0.0.2:8050"}, environ={})
    assert built.peers == (PeerSpec("127.0.0.2", 8050),) and built.cluster_token is None
    built = config.build({"peers": "dns:sm.svc:8050"}, environ={"NEKKO_CLUSTER_TOKEN": "t0ken"})
    assert built.cluster_token == "t0ken" and "t0ken" not in repr(built)
    with pytest.raises(config.ConfigError, match="--peers"):
        config.build({"peers": "nonsense"}, environ={})
