"""Downloads through a real forward proxy (tinyproxy): HTTP_PROXY, HTTPS_PROXY, NO_PROXY.

Plain http:// goes to the proxy in absolute form (the source sees the proxy's
``Via``), https:// through ``CONNECT`` with TLS to the origin inside the
tunnel (verified against the origin's name), proxy credentials go to the
proxy only, ``NO_PROXY`` hosts are reached directly, and the reach rules
still apply to the origin.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.fetch.ociref import Platform
from proxy.fetch.proxyenv import ProxyConfig, ProxyConfigError, parse_proxy
from tests.support.forward_proxy import TinyProxy
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess
from tests.support.source import Source

VIA = "test-forward-proxy"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def source() -> Iterator[Source]:
    with Source() as s:
        yield s


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path, ssl.SSLContext]:
    """A server context for 127.0.0.1, the CA file that trusts it, and one for 'localhost' only."""
    import trustme

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(other)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ctx, ca_file, other


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def proxy_lines(proxy: TinyProxy, port: int) -> list[str]:
    """Lines of the proxy's log that name the origin port (requests, CONNECTs)."""
    return [line for line in proxy.log().splitlines() if f":{port}" in line]


# -- environment parsing ------------------------------------------------------------------


def test_proxy_variables_lowercase_first_and_no_proxy_forms() -> None:
    cfg = ProxyConfig.from_env(
        {
            "HTTPS_PROXY": "http://upper:3128",
            "https_proxy": "lower:8080",
            "HTTP_PROXY": "http://u%40corp:p%3Ass@proxy.corp",
            "NO_PROXY": "ignored.example",
            "no_proxy": ".internal.example, example.org, *.svc.local, 10.0.0.0/8, 192.168.1.5,"
            " registry.corp:5000, [::1]",
        }
    )
    assert cfg.https is not None and (cfg.https.host, cfg.https.port) == ("lower", 8080)
    assert cfg.http is not None and (cfg.http.host, cfg.http.port) == ("proxy.corp", 80)
    assert cfg.http.authorization() == b"Basic dUBjb3JwOnA6c3M="  # u@corp:p:ss
    assert "p:ss" not in repr(cfg) and "p%3Ass" not in repr(cfg)
    assert "REDACTED" in cfg.http.redacted()
    direct = [
        ("https", "internal.example", 443),
        ("https", "a.b.internal.example", 443),
        ("https", "example.org", 443),
        ("https", "x.example.org", 443),
        ("https", "svc.local", 443),
        ("https", "a.svc.local", 443),
        ("https", "10.1.2.3", 443),
        ("https", "192.168.1.5", 443),
        ("http", "registry.corp", 5000),
        ("http", "::1", 80),
    ]
    for scheme, host, port in direct:
        assert cfg.proxy_for(scheme, host, port) is None, host
    proxied = [
        ("https", "ignored.example", 443),
        ("https", "notexample.org", 443),
        ("https", "11.1.2.3", 443),
        ("http", "registry.corp", 5001),
        ("https", "127.0.0.1", 443),  # loopback is not bypassed by itself (curl)
    ]
    for scheme, host, port in proxied:
        assert cfg.proxy_for(scheme, host, port) is not None, host
    assert (
        ProxyConfig.from_env({"HTTPS_PROXY": "p:1", "NO_PROXY": "*"}).proxy_for("https", "x", 443)
        is None
    )
    assert ProxyConfig.from_env({}).proxy_for("https", "x", 443) is None


def test_unusable_proxy_urls_are_refused() -> None:
    for value in ("socks5://p:1080", "https://p:3128", "http://:3128", "http://p:notaport"):
        with pytest.raises(ProxyConfigError):
            parse_proxy("HTTPS_PROXY", value)


def test_a_socks_proxy_is_a_startup_error(tmp_path: Path) -> None:
    from tests.support.server import run_cli

    r = run_cli("--cache-dir", str(tmp_path / "c"), env={"HTTPS_PROXY": "socks5://u:pw@p:1080"})
    assert r.returncode == 2, r.stderr
    assert "HTTPS_PROXY" in r.stderr and "socks5" in r.stderr and "pw" not in r.stderr


# -- through tinyproxy ----------------------------------------------------------------------


def test_http_download_goes_through_the_proxy(tmp_path: Path, source: Source) -> None:
    data = os.urandom(200_000)
    source.add_file("/plain.bin", data)
    url = source.url("/plain.bin")
    with TinyProxy(tmp_path / "proxy") as proxy:
        env = {"HTTP_PROXY": proxy.url()}
        with ServerProcess(tmp_path / "cache", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
            assert f"through {proxy.url()}" in srv.log()
        got = [q for q in source.requests if q.path == "/plain.bin"]
        assert got and all(VIA in q.headers.get("via", "") for q in got)
        assert any(f"GET {url} " in line for line in proxy_lines(proxy, port_of(url)))


def test_https_download_through_connect_with_the_origin_certificate(
    tmp_path: Path, tls: tuple[ssl.SSLContext, Path, ssl.SSLContext]
) -> None:
    ctx, ca_file, wrong_name = tls
    data = os.urandom(150_000)
    with Source(tls=ctx) as origin, Source(tls=wrong_name) as misnamed:
        origin.add_file("/secure.bin", data)
        misnamed.add_file("/secure.bin", data)
        url = origin.url("/secure.bin")
        ports = [port_of(url), port_of(misnamed.url("/"))]
        with TinyProxy(tmp_path / "proxy", connect_ports=ports) as proxy:
            env = {"HTTPS_PROXY": proxy.url(), "SSL_CERT_FILE": str(ca_file)}
            with ServerProcess(tmp_path / "cache", env=env) as srv, srv.client() as c:
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 201, r.text
                assert r.json()["digest"] == sha(data)
                # The certificate is checked against the origin's name, not the proxy's.
                r = c.post("/content/", json={"url": misnamed.url("/secure.bin")})
                assert r.status_code == 502, r.text
                assert "TLS" in r.json()["error"]["message"]
            assert any(
                f"CONNECT 127.0.0.1:{ports[0]} " in line for line in proxy_lines(proxy, ports[0])
            )
            assert any("CONNECT" in line for line in proxy_lines(proxy, ports[1]))
        got = [q for q in origin.requests if q.path == "/secure.bin"]
        # Inside the tunnel the proxy adds nothing: the bytes are TLS end to end.
        assert got and not any("via" in q.headers for q in got)


def test_proxy_credentials_go_to_the_proxy_only(
    tmp_path: Path, tls: tuple[ssl.SSLContext, Path, ssl.SSLContext]
) -> None:
    ctx, ca_file, _ = tls
    data = os.urandom(50_000)
    with Source(tls=ctx) as origin:
        origin.add_file("/auth.bin", data)
        url = origin.url("/auth.bin")
        port = port_of(url)
        with TinyProxy(
            tmp_path / "proxy", connect_ports=[port], user="robot", password="s3cret"
        ) as proxy:
            bad = {"HTTPS_PROXY": proxy.url("robot", "wrong-pw"), "SSL_CERT_FILE": str(ca_file)}
            with ServerProcess(tmp_path / "cache", env=bad) as srv, srv.client() as c:
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 502, r.text
                message = r.json()["error"]["message"]
                # tinyproxy answers wrong credentials with 401, missing ones with 407.
                assert f"proxy http://robot:REDACTED@127.0.0.1:{proxy.port} answered 401" in message
                assert "check the credentials" in message
                assert "wrong-pw" not in message and "wrong-pw" not in srv.log()
                assert f"through http://robot:REDACTED@127.0.0.1:{proxy.port}" in srv.log()
            assert not origin.requests
            good = {"HTTPS_PROXY": proxy.url("robot", "s3cret"), "SSL_CERT_FILE": str(ca_file)}
            with ServerProcess(tmp_path / "cache", env=good) as srv, srv.client() as c:
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 201, r.text
                assert r.json()["digest"] == sha(data)
                assert "s3cret" not in srv.log()
        got = [q for q in origin.requests if q.path == "/auth.bin"]
        assert got and not any("proxy-authorization" in q.headers for q in got)


def test_plain_http_without_the_credentials_the_proxy_wants(tmp_path: Path, source: Source) -> None:
    source.add_file("/x.bin", b"x" * 1000)
    with TinyProxy(tmp_path / "proxy", user="robot", password="s3cret") as proxy:
        env = {"HTTP_PROXY": proxy.url()}
        with ServerProcess(tmp_path / "cache", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": source.url("/x.bin")})
            assert r.status_code == 502, r.text
            message = r.json()["error"]["message"]
            assert f"proxy http://127.0.0.1:{proxy.port} answered 407" in message
    assert not source.requests


def test_no_proxy_hosts_are_reached_directly(tmp_path: Path, source: Source) -> None:
    data = os.urandom(10_000)
    source.add_file("/direct.bin", data)
    url = source.url("/direct.bin")
    with TinyProxy(tmp_path / "proxy") as proxy:
        env = {"http_proxy": proxy.url(), "no_proxy": "example.com,127.0.0.0/8"}
        with ServerProcess(tmp_path / "cache", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        assert proxy_lines(proxy, port_of(url)) == []
    got = [q for q in source.requests if q.path == "/direct.bin"]
    assert got and not any("via" in q.headers for q in got)


def test_oci_pull_through_the_proxy(tmp_path: Path) -> None:
    blobs = Blobs()
    top = blobs.image(Platform.running().architecture, layers=[random_bytes(30_000, 5)])
    with Registry(tmp_path / "registry") as registry:
        push_image_tree(registry.url, "proxied/app", blobs, top, "v1")
        with TinyProxy(tmp_path / "proxy") as proxy:
            env = {"HTTP_PROXY": proxy.url()}
            with ServerProcess(tmp_path / "cache", env=env) as srv, srv.client() as c:
                r = c.post("/content/", json={"url": f"oci://{registry.host}/proxied/app:v1"})
                assert r.status_code == 201, r.text
                assert r.json()["digest"] == top["digest"]
            lines = proxy_lines(proxy, port_of(registry.url))
            assert any("/v2/proxied/app/manifests/v1" in line for line in lines)
            assert any("/v2/proxied/app/blobs/sha256:" in line for line in lines)


def test_reach_rules_apply_to_the_origin_behind_the_proxy(tmp_path: Path) -> None:
    with TinyProxy(tmp_path / "proxy") as proxy:
        env = {"HTTP_PROXY": proxy.url(), "HTTPS_PROXY": proxy.url()}
        args = ("--allow-upstream", "*.allowed.invalid,169.254.169.254")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            for url in (
                "http://169.254.169.254/latest/meta-data/",
                "https://169.254.169.254/latest/meta-data/",
                "http://[::ffff:169.254.169.254]/latest/",
            ):
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 403, r.text
            r = c.post("/content/", json={"url": "http://elsewhere.invalid/x"})
            assert r.status_code == 403, r.text
            assert "--allow-upstream" in r.json()["error"]["message"]
            # A name this node cannot resolve still goes to the proxy, which resolves it.
            r = c.post("/content/", json={"url": "http://files.allowed.invalid/x"})
            assert r.status_code == 502, r.text
        log = proxy.log()
        assert "169.254.169.254" not in log and "elsewhere.invalid" not in log
        assert "files.allowed.invalid" in log
