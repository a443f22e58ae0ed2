"""The metadata address is refused in every IPv6 form that carries it to
IPv4 (NAT64, 6to4, Teredo, IPv4-compatible), with 403 DENIED; an ordinary
IPv6 literal URL is fetched (it used to fail inside treq with a 500)."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.errors import TargetDenied
from proxy.fetch.reach import ReachPolicy, embedded_ipv4
from tests.support.server import ServerProcess
from tests.support.source import Source

METADATA = ipaddress.IPv4Address("169.254.169.254")
FORMS = [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix (RFC 6052, /96)
    "64:ff9b::169.254.169.254",
    "64:ff9b:1::a9fe:a9fe",  # local-use prefix (RFC 8215), /96 inside it
    "64:ff9b:1:a9fe:a9:fe00::",  # local-use prefix used as a /48
    "64:ff9b:1:0:a9:fea9:fe00:0",  # ... as a /64
    "2002:a9fe:a9fe::",  # 6to4
    "2002:a9fe:a9fe:1:2:3:4:5",
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254 obfuscated
    "2001:0:a9fe:a9fe::1",  # Teredo, server 169.254.169.254
    "::a9fe:a9fe",  # IPv4-compatible (deprecated)
    "::ffff:a9fe:a9fe",  # IPv4-mapped (refused before too)
]


@pytest.mark.parametrize("address", FORMS)
def test_embedded_forms_carry_the_metadata_address(address: str) -> None:
    assert METADATA in embedded_ipv4(ipaddress.IPv6Address(address))
    with pytest.raises(TargetDenied):
        ReachPolicy().check_host(address)


@pytest.mark.parametrize(
    "address", ["::1", "2001:db8::1", "64:ff9b::808:808", "2002:808:808::", "64:ff9b:1::a00:1"]
)
def test_other_addresses_pass(address: str) -> None:
    ReachPolicy().check_host(address)


def test_posts_of_embedded_metadata_addresses_are_denied(server: ServerProcess) -> None:
    with server.client() as c:
        for address in FORMS:
            for url in (f"http://[{address}]/latest/meta-data/", f"https://[{address}]:8443/x"):
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 403, (url, r.status_code, r.text)
                assert r.json()["error"]["code"] == "DENIED", r.text
    assert "Traceback" not in server.log()


def test_a_redirect_to_an_embedded_form_is_denied(server: ServerProcess, source: Source) -> None:
    source.redirect("/r", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/")
    with server.client() as c:
        r = c.post("/content/", json={"url": source.url("/r")})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "DENIED"


def test_an_ipv6_literal_url_is_fetched(server: ServerProcess) -> None:
    with Source("::1") as v6:
        v6.add_file("/f", b"over IPv6")
        with server.client() as c:
            r = c.post("/content/", json={"url": v6.url("/f?q=%C3%A9")})
            assert r.status_code == 201, r.text
        assert [r.path for r in v6.requests_for("/f")][-1] == "/f?q=%C3%A9"
