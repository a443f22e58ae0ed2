"""The Ollama registry fake (tests/support/ollama_registry.py) against ollama's own pull sequence.

The requests below are the ones ollama's Go client sends (server/images.go ``pullModelManifest``,
server/download.go ``blobDownload.Prepare``/``run``/``downloadChunk``, x/transfer ``resolve``),
made with plain http.client so that nothing follows a redirect or adds a header behind our back;
one test uses httpx with redirects on.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import tests.support.ollama_registry as fake
from tests.support.ollama_registry import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    OllamaRegistry,
    ollama_signature_payload,
    sha256_digest,
)

# What ollama's makeRequest sends as User-Agent; the ranged part GETs use http.DefaultClient.
OLLAMA_UA = "ollama/0.11.4 (amd64 linux) Go/go1.24.5"
GO_UA = "Go-http-client/1.1"
TIMEOUT = 5.0

Response = tuple[int, http.client.HTTPMessage, bytes]


def request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host_header: str | None = None,
) -> Response:
    """One request on a fresh connection; never follows redirects."""
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "127.0.0.2")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.putrequest(method, target, skip_host=host_header is not None)
        if host_header is not None:
            conn.putheader("Host", host_header)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def errors_of(body: bytes) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = json.loads(body)["errors"]
    return errors


def parse_challenge(value: str) -> dict[str, str]:
    scheme, _, params = value.partition(" ")
    assert scheme == "Bearer"
    out = {}
    for item in params.split('",'):
        key, _, val = item.partition("=")
        out[key.strip()] = val.strip('"')
    return out


@pytest.fixture
def reg() -> Iterator[OllamaRegistry]:
    with OllamaRegistry() as r:
        yield r


def tiny_layers(model_size: int = 300_000) -> list[tuple[str, bytes]]:
    return [
        (MEDIA_TYPE_MODEL, b"GGUF" + os.urandom(model_size - 4)),
        (MEDIA_TYPE_TEMPLATE, b"<|system|>\n{{ .System }}</s>\n<|user|>\n{{ .Prompt }}</s>\n"),
        (MEDIA_TYPE_PARAMS, b'{"stop":["<|system|>","<|user|>","<|assistant|>","</s>"]}'),
        (MEDIA_TYPE_LICENSE, b"Apache License 2.0\n"),
        (MEDIA_TYPE_SYSTEM, b"You are a helpful assistant.\n"),
    ]


def manifest_url(reg: OllamaRegistry, repo: str = "library/tinyllama", ref: str = "latest") -> str:
    return f"{reg.url}/v2/{repo}/manifests/{ref}"


def blob_url(reg: OllamaRegistry, digest: str, repo: str = "library/tinyllama") -> str:
    return f"{reg.url}/v2/{repo}/blobs/{digest}"


def parts_for(total: int, num_parts: int = 16, min_part: int = 64 * 1024) -> list[tuple[int, int]]:
    """blobDownload.Prepare's split (16 parts, clamped; min scaled down from 100 MB)."""
    size = min(max(total // num_parts, min_part), 1000 * 1000 * 1000)
    parts, offset = [], 0
    while offset < total:
        size = min(size, total - offset)
        parts.append((offset, size))
        offset += size
    return parts


def ollama_download(reg: OllamaRegistry, repo: str, digest: str) -> bytes:
    """download.go for one blob: HEAD (redirect followed) for size, GET for the URL, ranged GETs."""
    # Prepare: makeRequestWithRetry(HEAD), Go's default client follows the 307 as a HEAD and
    # copies User-Agent; it adds a Referer. No Accept-Encoding on HEAD.
    url = blob_url(reg, digest, repo)
    status, headers, body = request(url, "HEAD", {"User-Agent": OLLAMA_UA})
    assert status == 307 and body == b""
    assert headers["Content-Length"] is None
    status, headers, body = request(
        headers["Location"], "HEAD", {"User-Agent": OLLAMA_UA, "Referer": url}
    )
    assert status == 200 and body == b""
    total = int(headers["Content-Length"])
    # run: GET with a CheckRedirect that stops at the first foreign hostname -> the 307 itself.
    status, headers, body = request(
        url, "GET", {"User-Agent": OLLAMA_UA, "Accept-Encoding": "gzip"}
    )
    assert status == 307
    direct = headers["Location"]
    assert urlsplit(direct).hostname != urlsplit(url).hostname
    # downloadChunk: one GET per part on http.DefaultClient, only Range (no Accept-Encoding).
    out = bytearray(total)

    def part(offset: int, size: int) -> None:
        rng = f"bytes={offset}-{offset + size - 1}"
        status, headers, data = request(direct, "GET", {"User-Agent": GO_UA, "Range": rng})
        assert status == 206, status
        assert headers["Content-Range"] == f"bytes {offset}-{offset + size - 1}/{total}"
        assert len(data) == size
        out[offset : offset + size] = data

    parts = parts_for(total)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(part, o, s) for o, s in parts]:
            future.result(timeout=TIMEOUT)
    return bytes(out)


# -- publishing -----------------------------------------------------------------------------


def test_add_model_builds_the_manifest_ollama_pushes(reg: OllamaRegistry) -> None:
    layers = tiny_layers(1000)
    digest = reg.add_model(layers=layers)
    published = reg.model()
    assert digest == published.digest == sha256_digest(published.manifest)
    doc = json.loads(published.manifest)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == MANIFEST_MEDIA_TYPE
    assert doc["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert [list(entry) for entry in doc["layers"]] == [["mediaType", "digest", "size"]] * 5
    assert [(entry["mediaType"], entry["digest"], entry["size"]) for entry in doc["layers"]] == [
        (media_type, sha256_digest(data), len(data)) for media_type, data in layers
    ]
    assert b" " not in published.manifest and not published.manifest.endswith(b"\n")
    config = reg.blob(doc["config"]["digest"])
    assert config.endswith(b"}\n")  # json.Encoder
    assert json.loads(config)["rootfs"] == {
        "type": "layers",
        "diff_ids": [sha256_digest(data) for _, data in layers],
    }
    own = reg.add_model(model="other", layers=layers[:1], config=b'{"model_format":"gguf"}')
    assert json.loads(reg.blob(own))["config"]["digest"] == sha256_digest(
        b'{"model_format":"gguf"}'
    )


def test_add_model_validates_like_ollama_names(reg: OllamaRegistry) -> None:
    with pytest.raises(ValueError, match="namespace"):
        reg.add_model(namespace="my.ns", layers=tiny_layers(10))
    with pytest.raises(ValueError, match="tag"):
        reg.add_model(tag="a:b", layers=tiny_layers(10))
    with pytest.raises(ValueError, match="media type"):
        reg.add_model(layers=[("application/octet-stream", b"x")])
    with pytest.raises(ValueError, match="layer"):
        reg.add_model(layers=[])


# -- registry quirks ------------------------------------------------------------------------


def test_v2_root_is_a_go_404(reg: OllamaRegistry) -> None:
    for path in ("/v2/", "/v2", "/", "/v2/library/tinyllama/tags/list"):
        status, headers, body = request(reg.url + path)
        assert status == 404, path
        assert body == b"404 page not found\n"
        assert headers["Content-Type"] == "text/plain; charset=utf-8"


def test_manifest_is_text_plain_chunked_without_digest(reg: OllamaRegistry) -> None:
    digest = reg.add_model(layers=tiny_layers(1000))
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request(
            "GET",
            "/v2/library/tinyllama/manifests/latest",
            headers={"Accept": MANIFEST_MEDIA_TYPE, "User-Agent": OLLAMA_UA},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert resp.getheader("Content-Length") is None
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("Docker-Content-Digest") is None
        body = resp.read()
        # keep-alive still works after a chunked body
        conn.request("GET", "/v2/library/tinyllama/manifests/latest")
        again = conn.getresponse()
        assert again.status == 200 and again.read() == body
    finally:
        conn.close()
    assert sha256_digest(body) == digest
    assert body == reg.model().manifest
    # HEAD: same headers, no body, still no length or digest
    status, headers, head_body = request(manifest_url(reg), "HEAD")
    assert status == 200 and head_body == b""
    assert headers["Content-Length"] is None and headers["Docker-Content-Digest"] is None


def test_manifest_content_type_is_configurable() -> None:
    with OllamaRegistry(manifest_content_type=MANIFEST_MEDIA_TYPE, manifest_chunk=7) as reg:
        reg.add_model(layers=tiny_layers(10))
        status, headers, body = request(manifest_url(reg))
        assert status == 200 and headers["Content-Type"] == MANIFEST_MEDIA_TYPE
        assert body == reg.model().manifest


def test_accept_header_is_ignored(reg: OllamaRegistry) -> None:
    reg.add_model(layers=tiny_layers(10))
    bodies = {
        request(manifest_url(reg), headers={"Accept": accept})[2]
        for accept in ("application/vnd.oci.image.index.v1+json", "*/*", MANIFEST_MEDIA_TYPE)
    }
    assert bodies == {reg.model().manifest}


def test_unknown_model_tag_and_digest_are_manifest_unknown(reg: OllamaRegistry) -> None:
    digest = reg.add_model(layers=tiny_layers(10))
    for url in (
        manifest_url(reg, "library/nosuchmodel"),
        manifest_url(reg, ref="nosuchtag"),
        manifest_url(reg, ref=digest),  # manifests by digest are not served
        manifest_url(reg, "otherns/tinyllama"),
    ):
        status, headers, body = request(url, headers={"Accept": MANIFEST_MEDIA_TYPE})
        assert status == 404, url
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        [error] = errors_of(body)
        assert error["code"] == "MANIFEST_UNKNOWN" and error["message"]
    status, _, body = request(manifest_url(reg, ref="nosuchtag"), "HEAD")
    assert status == 404 and body == b""


def test_retagging_moves_the_tag(reg: OllamaRegistry) -> None:
    first = reg.add_model(layers=tiny_layers(10))
    second = reg.add_model(layers=tiny_layers(20))
    assert first != second
    assert sha256_digest(request(manifest_url(reg))[2]) == second
    reg.remove_model("library", "tinyllama", "latest")
    assert request(manifest_url(reg))[0] == 404


def test_blob_is_a_307_to_a_signed_cdn_url(reg: OllamaRegistry) -> None:
    layers = tiny_layers(1000)
    reg.add_model(layers=layers)
    digest = sha256_digest(layers[0][1])
    status, headers, body = request(blob_url(reg, digest), headers={"User-Agent": OLLAMA_UA})
    assert status == 307
    location = headers["Location"]
    parts = urlsplit(location)
    assert parts.scheme == "http" and parts.netloc == reg.cdn.host
    assert parts.hostname == "127.0.0.2" and reg.cdn.distinct_hostname
    hex_ = digest.removeprefix("sha256:")
    assert parts.path == f"/ollama/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].endswith("/auto/s3/aws4_request")
    assert query["X-Amz-Expires"] == ["86400"] and query["X-Amz-SignedHeaders"] == ["host"]
    assert len(query["X-Amz-Signature"][0]) == 64
    assert list(query)[-1] == "X-Amz-Signature"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.startswith(b'<a href="http://') and body.endswith(b"Temporary Redirect</a>.\n\n")
    assert int(headers["Content-Length"]) == len(body)
    # HEAD: 307 too, and its Content-Length says nothing about the blob
    status, headers, body = request(blob_url(reg, digest), "HEAD")
    assert status == 307 and body == b"" and headers["Content-Length"] is None
    assert urlsplit(headers["Location"]).netloc == reg.cdn.host
    # every redirect is freshly signed (the signature is bound to the method)
    status, cdn_headers, data = request(location)
    assert status == 200 and data == layers[0][1]
    assert int(cdn_headers["Content-Length"]) == len(data)


def test_unknown_blobs_are_blob_unknown(reg: OllamaRegistry) -> None:
    mine = reg.add_model(layers=[(MEDIA_TYPE_MODEL, b"mine")])
    reg.add_model(model="other", layers=[(MEDIA_TYPE_MODEL, b"theirs")])
    theirs = sha256_digest(b"theirs")
    for url in (
        blob_url(reg, sha256_digest(b"nope")),
        blob_url(reg, theirs),  # blobs are per repository
        blob_url(reg, "sha256:xyz"),
        blob_url(reg, sha256_digest(b"mine"), "library/nosuchmodel"),
    ):
        status, _, body = request(url)
        assert status == 404, url
        assert errors_of(body)[0]["code"] == "BLOB_UNKNOWN"
    # a manifest is also reachable as a blob (client2's name@digest resolution)
    status, headers, _ = request(blob_url(reg, mine))
    assert status == 307
    assert request(headers["Location"])[2] == reg.model().manifest


def test_push_methods_are_unsupported(reg: OllamaRegistry) -> None:
    reg.add_model(layers=tiny_layers(10))
    status, _, body = request(
        manifest_url(reg), "PUT", {"Content-Type": MANIFEST_MEDIA_TYPE, "Content-Length": "0"}
    )
    assert status == 405 and errors_of(body)[0]["code"] == "UNSUPPORTED"


# -- the whole pull, as ollama does it ------------------------------------------------------


def test_ollama_pull_sequence(reg: OllamaRegistry, tmp_path: Path) -> None:
    layers = tiny_layers(700_000)
    reg.add_model(layers=layers)
    reg.clear_requests()

    # pullModelManifest
    status, _, manifest = request(
        manifest_url(reg),
        headers={
            "Accept": MANIFEST_MEDIA_TYPE,
            "User-Agent": OLLAMA_UA,
            "Accept-Encoding": "gzip",
        },
    )
    assert status == 200
    doc = json.loads(manifest)
    descriptors = [*doc["layers"], doc["config"]]  # PullModel: layers, then the config

    models = tmp_path / "models"
    for descriptor in descriptors:
        data = ollama_download(reg, "library/tinyllama", descriptor["digest"])
        assert len(data) == descriptor["size"]
        assert sha256_digest(data) == descriptor["digest"]  # verifyBlob
        blob = models / "blobs" / descriptor["digest"].replace(":", "-")
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
    target = models / "manifests" / reg.host / "library" / "tinyllama" / "latest"
    target.parent.mkdir(parents=True)
    target.write_bytes(manifest)
    written = {
        p.relative_to(models).as_posix(): p.read_bytes() for p in models.rglob("*") if p.is_file()
    }
    assert written == reg.models_dir_layout()

    # What the servers saw, in order.
    seen = reg.requests()
    assert [r.seq for r in seen] == sorted(r.seq for r in seen)
    first = seen[0]
    assert (first.server, first.method, first.path) == (
        "registry",
        "GET",
        "/v2/library/tinyllama/manifests/latest",
    )
    assert first.headers["accept"] == MANIFEST_MEDIA_TYPE
    assert first.headers["user-agent"] == OLLAMA_UA
    assert first.host == reg.host
    rest = seen[1:]
    model_parts = len(parts_for(descriptors[0]["size"]))
    assert model_parts > 1
    for descriptor in descriptors:
        n = len(parts_for(descriptor["size"]))
        chunk, rest = rest[: 3 + n], rest[3 + n :]
        assert [(r.server, r.method) for r in chunk[:4]] == [
            ("registry", "HEAD"),
            ("cdn", "HEAD"),
            ("registry", "GET"),
            ("cdn", "GET"),
        ]
        assert chunk[0].path == f"/v2/library/tinyllama/blobs/{descriptor['digest']}"
        assert chunk[1].host == reg.cdn.host and "X-Amz-Signature" in chunk[1].query
        ranges = sorted(r.headers["range"] for r in chunk[3:])
        assert all(r.server == "cdn" and r.method == "GET" for r in chunk[3:])
        assert len(ranges) == n
        assert "authorization" not in {h for r in chunk[1:] for h in r.headers}
    assert rest == []
    assert len(reg.cdn.requests) == sum(1 + len(parts_for(d["size"])) for d in descriptors)


def test_x_transfer_sequence(reg: OllamaRegistry) -> None:
    """x/transfer resolve: GET without following, Location host (with port) differs -> GET it."""
    layers = tiny_layers(5000)
    reg.add_model(layers=layers)
    digest = sha256_digest(layers[0][1])
    ua = {"User-Agent": "ollama-transfer/1.0"}
    status, headers, _ = request(blob_url(reg, digest), headers=ua)
    assert status == 307
    location = headers["Location"]
    assert urlsplit(location).netloc != reg.host
    status, headers, data = request(location, headers=ua)
    assert status == 200 and sha256_digest(data) == digest
    # resume of a partial .tmp: open-ended range
    status, headers, tail = request(location, headers={**ua, "Range": "bytes=1000-"})
    assert status == 206 and tail == data[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"


def test_httpx_following_redirects(reg: OllamaRegistry) -> None:
    layers = tiny_layers(5000)
    reg.add_model(layers=layers)
    digest = sha256_digest(layers[0][1])
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client:
        head = client.head(blob_url(reg, digest))
        assert head.status_code == 200 and int(head.headers["content-length"]) == 5000
        resp = client.get(
            blob_url(reg, digest),
            headers={"Authorization": "Bearer registry-token", "Range": "bytes=0-99"},
        )
        assert resp.status_code == 206 and resp.content == layers[0][1][:100]
        assert [r.status_code for r in resp.history] == [307]
    cdn_get = reg.cdn.requests[-1]
    assert cdn_get.headers["range"] == "bytes=0-99"
    assert "authorization" not in cdn_get.headers  # httpx drops it across origins
    assert reg.requests(server="registry")[-1].headers["authorization"] == "Bearer registry-token"


def test_chunksums(reg: OllamaRegistry) -> None:
    small = OllamaRegistry(chunksum_size=1000)
    with small:
        layers = tiny_layers(4500)
        small.add_model(layers=layers)
        digest = sha256_digest(layers[0][1])
        status, headers, body = request(f"{small.url}/v2/library/tinyllama/chunksums/{digest}")
        assert status == 200
        lines = body.decode().splitlines()
        assert len(lines) == 5
        location = headers["Content-Location"]
        assembled = b""
        for line in lines:
            chunk_digest, span = line.split(" ")
            start, end = (int(x) for x in span.split("-"))
            st, _, data = request(location, headers={"Range": f"bytes={start}-{end}"})
            assert st == 206 and sha256_digest(data) == chunk_digest
            assembled += data
        assert assembled == layers[0][1]


# -- the CDN --------------------------------------------------------------------------------


def cdn_url(reg: OllamaRegistry, digest: str, method: str = "GET") -> str:
    return reg.cdn.sign_url(digest, method=method)


def test_cdn_ranges(reg: OllamaRegistry) -> None:
    data = os.urandom(10_000)
    reg.add_model(layers=[(MEDIA_TYPE_MODEL, data)])
    url = cdn_url(reg, sha256_digest(data))
    status, headers, body = request(url)
    assert status == 200 and body == data
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["ETag"] == f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
    assert headers["Last-Modified"]
    cases = {
        "bytes=0-0": (206, data[:1], "bytes 0-0/10000"),
        "bytes=9990-": (206, data[9990:], "bytes 9990-9999/10000"),
        "bytes=-10": (206, data[-10:], "bytes 9990-9999/10000"),
        "bytes=9000-20000": (206, data[9000:], "bytes 9000-9999/10000"),
        "bytes=0-1,5-6": (200, data, None),  # multi-range ignored
        "bytes=abc": (200, data, None),
        "items=0-1": (200, data, None),
    }
    for rng, (want_status, want_body, want_range) in cases.items():
        status, headers, body = request(url, headers={"Range": rng})
        assert (status, body, headers["Content-Range"]) == (want_status, want_body, want_range), rng
        assert int(headers["Content-Length"]) == len(want_body)
    for rng in ("bytes=10000-", "bytes=20000-20001", "bytes=-0"):
        status, headers, body = request(url, headers={"Range": rng})
        assert status == 416, rng
        assert headers["Content-Range"] == "bytes */10000"
        assert b"<Code>InvalidRange</Code>" in body
    head_url = cdn_url(reg, sha256_digest(data), "HEAD")
    status, headers, body = request(head_url, "HEAD", {"Range": "bytes=10-19"})
    assert status == 206 and body == b"" and headers["Content-Length"] == "10"


def test_cdn_checks_presigned_urls(reg: OllamaRegistry) -> None:
    data = b"weights" * 100
    reg.add_model(layers=[(MEDIA_TYPE_MODEL, data)])
    digest = sha256_digest(data)
    url = cdn_url(reg, digest)
    base, _, query = url.partition("?")
    params = parse_qs(query)

    def code(status_headers_body: Response) -> tuple[int, str]:
        status, _, body = status_headers_body
        return status, body.decode().partition("<Code>")[2].partition("</Code>")[0]

    assert request(url)[0] == 200
    reordered = base + "?" + urlencode({k: v[0] for k, v in reversed(params.items())})
    assert request(reordered)[2] == data  # SigV4 signs the sorted query
    assert code(request(base)) == (403, "AccessDenied")
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert code(request(tampered)) == (403, "SignatureDoesNotMatch")
    assert code(request(url + "&extra=1")) == (403, "SignatureDoesNotMatch")
    assert code(request(url, host_header="cdn.example")) == (403, "SignatureDoesNotMatch")
    assert request(url, "HEAD")[0] == 403  # a GET URL used for HEAD (no body on HEAD)
    assert code(request(cdn_url(reg, digest, "HEAD"))) == (403, "SignatureDoesNotMatch")
    other = url.replace(reg.cdn.object_path(digest), reg.cdn.object_path(sha256_digest(b"x")))
    assert code(request(other)) == (403, "SignatureDoesNotMatch")
    stale = reg.cdn.sign_url(digest, now=time.time() - 86400 - 60)
    status, _, body = request(stale)
    assert (status, b"Request has expired" in body) == (403, True)
    reg.cdn.expire_urls()
    status, _, body = request(url)
    assert (status, b"Request has expired" in body) == (403, True)
    assert request(cdn_url(reg, digest))[2] == data
    missing = reg.cdn.sign_url(sha256_digest(b"not stored"))
    assert code(request(missing)) == (404, "NoSuchKey")


def test_cdn_fallback_when_127_0_0_2_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fake._ServerThread

    def no_second_loopback(address: str, *args: object) -> fake._ServerThread:
        if address == "127.0.0.2":
            raise OSError(99, "Cannot assign requested address")
        return real(address, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(fake, "_ServerThread", no_second_loopback)
    with OllamaRegistry() as reg:
        assert reg.cdn.hostname == "127.0.0.1" and reg.cdn.port != reg.port
        assert not reg.cdn.distinct_hostname
        reg.add_model(layers=[(MEDIA_TYPE_MODEL, b"abc")])
        status, headers, _ = request(blob_url(reg, sha256_digest(b"abc")))
        assert status == 307 and urlsplit(headers["Location"]).netloc == reg.cdn.host
        assert request(headers["Location"])[2] == b"abc"


def test_corrupt_once(reg: OllamaRegistry) -> None:
    data = os.urandom(50_000)
    reg.add_model(layers=[(MEDIA_TYPE_MODEL, data)])
    digest = sha256_digest(data)
    reg.corrupt_blob_once(digest)
    status, headers, bad = request(cdn_url(reg, digest))
    assert status == 200 and len(bad) == len(data) == int(headers["Content-Length"])
    assert sha256_digest(bad) != digest
    assert sha256_digest(request(cdn_url(reg, digest))[2]) == digest
    # on a ranged part too
    reg.cdn.corrupt_once(digest)
    assert request(cdn_url(reg, digest), headers={"Range": "bytes=100-199"})[2] != data[100:200]
    assert request(cdn_url(reg, digest), headers={"Range": "bytes=100-199"})[2] == data[100:200]


def test_cut_once(reg: OllamaRegistry) -> None:
    data = os.urandom(200_000)
    reg.add_model(layers=[(MEDIA_TYPE_MODEL, data)])
    digest = sha256_digest(data)
    for after, expect in ((None, 100_000), (1234, 1234)):
        reg.cut_blob_once(digest, after)
        with pytest.raises(http.client.IncompleteRead) as info:
            request(cdn_url(reg, digest))
        assert len(info.value.partial) == expect
        assert request(cdn_url(reg, digest))[2] == data
    # a ranged GET cut mid-way
    reg.cdn.cut_once(digest, 10)
    with pytest.raises(http.client.IncompleteRead) as info:
        request(cdn_url(reg, digest), headers={"Range": "bytes=1000-1999"})
    assert info.value.partial == data[1000:1010]


# -- auth -----------------------------------------------------------------------------------


def token_from(
    reg: OllamaRegistry, challenge: dict[str, str], authorization: str | None = None
) -> Response:
    query = urlencode({"scope": challenge["scope"], "service": challenge["service"]})
    headers = {"Authorization": authorization} if authorization else {}
    return request(f"{challenge['realm']}?{query}", headers=headers)


def test_private_model_token_flow(reg: OllamaRegistry) -> None:
    reg.add_secret("s3cret")
    layers = tiny_layers(1000)
    reg.add_model(namespace="acme", model="secretllama", layers=layers, private=True)
    reg.add_model(layers=tiny_layers(10))
    url = manifest_url(reg, "acme/secretllama")

    status, headers, body = request(url, headers={"Accept": MANIFEST_MEDIA_TYPE})
    assert status == 401 and errors_of(body)[0]["code"] == "UNAUTHORIZED"
    challenge = parse_challenge(headers["WWW-Authenticate"])
    assert challenge == {
        "realm": f"http://{reg.host}/v2/token",  # same host as the registry: auth.go insists
        "service": "ollama.com",
        "scope": "repository:acme/secretllama:pull",
    }

    # anonymous: a token, but it does not open the private repository
    status, _, body = token_from(reg, challenge)
    assert status == 200
    anonymous = json.loads(body)["token"]
    assert request(url, headers={"Authorization": f"Bearer {anonymous}"})[0] == 401

    # wrong secret: refused at the realm
    status, _, body = token_from(reg, challenge, "Bearer wrong")
    assert status == 401 and errors_of(body)[0]["code"] == "UNAUTHORIZED"

    for authorization in ("Bearer s3cret", "Basic " + base64.b64encode(b"me:s3cret").decode()):
        status, _, body = token_from(reg, challenge, authorization)
        assert status == 200 and set(json.loads(body)) == {"token"}
        token = json.loads(body)["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        status, _, manifest = request(url, headers=bearer)
        assert status == 200 and manifest == reg.model("acme", "secretllama").manifest
        digest = sha256_digest(layers[0][1])
        assert request(blob_url(reg, digest, "acme/secretllama"))[0] == 401
        status, headers, _ = request(blob_url(reg, digest, "acme/secretllama"), headers=bearer)
        assert status == 307
        assert request(headers["Location"])[2] == layers[0][1]  # the CDN needs no token

    # public models need nothing and ignore a bogus token
    status, _, _ = request(manifest_url(reg), headers={"Authorization": "Bearer bogus"})
    assert status == 200
    # a token is scoped to the repositories it was asked for
    reg.add_model(namespace="acme", model="other", layers=tiny_layers(10), private=True)
    assert request(manifest_url(reg, "acme/other"), headers=bearer)[0] == 401


def test_ollama_key_signature(reg: OllamaRegistry) -> None:
    reg.add_model(namespace="acme", model="secretllama", layers=tiny_layers(100), private=True)
    url = manifest_url(reg, "acme/secretllama")
    challenge = parse_challenge(request(url)[1]["WWW-Authenticate"])

    def signed_token(key: Ed25519PrivateKey, tamper: bool = False) -> Response:
        # registryChallenge.URL: realm + service, scope, ts, nonce; url.Values.Encode sorts keys
        query = urlencode(
            sorted(
                {
                    "service": challenge["service"],
                    "scope": challenge["scope"],
                    "ts": str(int(time.time())),
                    "nonce": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
                }.items()
            )
        )
        token_url = f"{challenge['realm']}?{query}"
        signature = key.sign(ollama_signature_payload(token_url + ("x" if tamper else "")))
        openssh = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        authorization = f"{openssh.split()[1]}:{base64.b64encode(signature).decode()}"
        return request(token_url, headers={"Authorization": authorization, "User-Agent": OLLAMA_UA})

    known, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = known.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    reg.add_ollama_key(public.decode() + " me@host")

    status, _, body = signed_token(known)
    assert status == 200
    token = json.loads(body)["token"]
    assert request(url, headers={"Authorization": f"Bearer {token}"})[0] == 200

    status, _, body = signed_token(stranger)  # valid signature, unknown key: anonymous
    assert status == 200
    stranger_token = json.loads(body)["token"]
    assert request(url, headers={"Authorization": f"Bearer {stranger_token}"})[0] == 401

    assert signed_token(known, tamper=True)[0] == 401


# -- recording ------------------------------------------------------------------------------


def test_recording(reg: OllamaRegistry) -> None:
    reg.add_model(layers=[(MEDIA_TYPE_MODEL, b"abc")])
    reg.clear_requests()
    request(manifest_url(reg) + "?x=1", headers={"X-Mixed-Case": "Value", "Accept": "a/b"})
    location = request(blob_url(reg, sha256_digest(b"abc")))[1]["Location"]
    request(location, headers={"Range": "bytes=0-1"})
    registry_seen, cdn_seen = reg.requests(server="registry"), reg.cdn.requests
    assert [r.server for r in reg.requests()] == ["registry", "registry", "cdn"]
    first = registry_seen[0]
    assert first.method == "GET"
    assert first.target == "/v2/library/tinyllama/manifests/latest?x=1"
    assert first.path == "/v2/library/tinyllama/manifests/latest"
    assert first.query == {"x": ["1"]}
    assert first.headers["x-mixed-case"] == "Value" and first.headers["accept"] == "a/b"
    assert first.host == reg.host
    assert all(k == k.lower() for r in reg.requests() for k in r.headers)
    [cdn] = cdn_seen
    assert cdn.host == reg.cdn.host and cdn.target == location.partition(reg.cdn.host)[2]
    assert cdn.headers["range"] == "bytes=0-1"
    reg.clear_requests()
    assert reg.requests() == []
