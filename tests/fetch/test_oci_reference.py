"""oci:// URL parsing (distribution grammar) and registry auth challenges."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import BadRequest
from proxy.fetch.auth import parse_challenge
from proxy.fetch.ociref import Platform, parse_oci_url

H = "a" * 64


@pytest.mark.parametrize(
    ("url", "registry", "repo", "tag", "digest", "name"),
    [
        (
            "oci://ghcr.io/org/team/img:1.2",
            "ghcr.io",
            "org/team/img",
            "1.2",
            None,
            "ghcr.io/org/team/img:1.2",
        ),
        (
            "oci://127.0.0.1:5000/a/b",
            "127.0.0.1:5000",
            "a/b",
            None,
            None,
            "127.0.0.1:5000/a/b:latest",
        ),
        (
            f"oci://reg.example/x@sha256:{H}",
            "reg.example",
            "x",
            None,
            f"sha256:{H}",
            f"reg.example/x@sha256:{H}",
        ),
        (
            f"oci://reg.example:443/x/y:v1@sha256:{H}",
            "reg.example:443",
            "x/y",
            "v1",
            f"sha256:{H}",
            "reg.example:443/x/y:v1",
        ),
        (
            "oci://docker.io/alpine:3",
            "docker.io",
            "library/alpine",
            "3",
            None,
            "docker.io/library/alpine:3",
        ),
        (
            "oci://registry-1.docker.io/library/alpine",
            "docker.io",
            "library/alpine",
            None,
            None,
            "docker.io/library/alpine:latest",
        ),
        (
            "oci://[::1]:5000/a__b/c-d.e:t_1",
            "[::1]:5000",
            "a__b/c-d.e",
            "t_1",
            None,
            "[::1]:5000/a__b/c-d.e:t_1",
        ),
    ],
)
def test_valid_references(
    url: str, registry: str, repo: str, tag: str | None, digest: str | None, name: str
) -> None:
    ref = parse_oci_url(url)
    assert ref.registry == registry
    assert ref.repository == repo
    assert ref.tag == tag
    assert (str(ref.digest) if ref.digest else None) == digest
    assert ref.name == name
    assert ref.manifest_ref == (digest or tag or "latest")


def test_docker_hub_endpoint_and_platform() -> None:
    ref = parse_oci_url("oci://index.docker.io/nginx:1?platform=linux/arm64/v8")
    assert ref.endpoint == "registry-1.docker.io"
    assert ref.platform == Platform("linux", "arm64", "v8")
    assert ref.hostname == "registry-1.docker.io"
    assert parse_oci_url("oci://[::1]:5000/a").hostname == "::1"


@pytest.mark.parametrize(
    "url",
    [
        "oci://reg/UPPER:1",
        "oci://reg/a//b",
        "oci://reg/-a",
        "oci://reg/a:",
        "oci://reg/a:-bad",
        "oci://reg/a:" + "t" * 129,
        "oci://reg/a@sha256:abc",
        "oci://reg/a@md5:" + "0" * 32,
        "oci://reg/a@sha512:" + "0" * 128,
        "oci:///a:1",
        "oci://reg_bad/a",
        "oci://reg/",
        "oci://reg/a?platform=linux",
        "oci://reg/a?foo=bar",
        "oci://reg/a#frag",
        "oci://reg/" + "a/" * 130 + "a",
    ],
)
def test_invalid_references(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_oci_url(url)


def test_platform_matching() -> None:
    p = Platform("linux", "arm64")
    assert p.matches({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert not p.matches({"os": "linux", "architecture": "amd64"})
    assert not p.matches(None)
    v7 = Platform("linux", "arm", "v7")
    assert v7.matches({"os": "linux", "architecture": "arm", "variant": "v7"})
    assert not v7.matches({"os": "linux", "architecture": "arm", "variant": "v6"})
    assert Platform.running().os == "linux"


def test_challenge_parsing() -> None:
    ch = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert ch is not None and ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="basic-realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params["realm"] == "basic-realm"
    assert parse_challenge("") is None


def test_plain_http_only_for_loopback_and_insecure_registries() -> None:
    from twisted.internet import reactor

    from proxy.cache.layout import Layout
    from proxy.fetch.oci import OciFetcher
    from proxy.fetch.reach import ReachPolicy
    from proxy.fetch.transfer import HttpClient

    client = HttpClient(reactor, ReachPolicy())
    fetcher = OciFetcher(client, Layout(Path("/nonexistent")), insecure=frozenset({"reg.lan:5000"}))
    assert fetcher.base_url(parse_oci_url("oci://127.0.0.1:5000/a")) == "http://127.0.0.1:5000"
    assert fetcher.base_url(parse_oci_url("oci://localhost:5000/a")) == "http://localhost:5000"
    assert fetcher.base_url(parse_oci_url("oci://[::1]:5000/a")) == "http://[::1]:5000"
    assert fetcher.base_url(parse_oci_url("oci://reg.lan:5000/a")) == "http://reg.lan:5000"
    assert fetcher.base_url(parse_oci_url("oci://reg.lan/a")) == "https://reg.lan"
    assert fetcher.base_url(parse_oci_url("oci://ghcr.io/a/b")) == "https://ghcr.io"
    assert fetcher.base_url(parse_oci_url("oci://docker.io/alpine")) == (
        "https://registry-1.docker.io"
    )
