"""Entry keys: a pre-signed URL of a known form loses its signature (a fresh
signature names the same entry), and nothing else collapses: two URLs that
may name different content are two entries, each fetched from upstream."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote_plus, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.presigned import HIDDEN_PREFIX, entry_key
from proxy.redact import SECRET_PARAMS
from tests.conftest import b64
from tests.support.server import ServerProcess
from tests.support.source import Source

SIGV4 = {
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": "AKIAEXAMPLE/20261207/us-east-1/s3/aws4_request",
    "X-Amz-Date": "20261207T120000Z",
    "X-Amz-Expires": "3600",
    "X-Amz-SignedHeaders": "host",
    "X-Amz-Signature": "a" * 64,
}
# Each known form, and the names that change with every signature.
FORMS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "sigv4": (SIGV4, ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Signature", "X-Amz-Expires")),
    "sigv2": (
        {"AWSAccessKeyId": "AKIA", "Expires": "1800000000", "Signature": "c2ln"},
        ("AWSAccessKeyId", "Expires", "Signature"),
    ),
    "goog4": (
        {
            "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
            "X-Goog-Credential": "sa@p.iam.gserviceaccount.com/20261207/auto/storage/goog4_request",
            "X-Goog-Date": "20261207T120000Z",
            "X-Goog-Expires": "900",
            "X-Goog-SignedHeaders": "host",
            "X-Goog-Signature": "b" * 64,
        },
        ("X-Goog-Credential", "X-Goog-Date", "X-Goog-Signature"),
    ),
    "goog2": (
        {"GoogleAccessId": "sa@p", "Expires": "1800000000", "Signature": "c2ln"},
        ("Expires", "Signature"),
    ),
    "azure": (
        {
            "sv": "2022-11-02",
            "sr": "b",
            "sp": "r",
            "st": "2026-12-07",
            "se": "2026-12-08",
            "sig": "x",
        },
        ("st", "se", "sig"),
    ),
    "cloudfront": (
        {"Expires": "1800000000", "Signature": "c2ln~x", "Key-Pair-Id": "K2L8F4GPSG1IFC"},
        ("Expires", "Signature"),
    ),
}
GENERIC = ["key", "token", "st", "sp", "sr", "policy", "expires", "password", "secret", "sig"]

VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


def url(query: dict[str, str] | list[tuple[str, str]], base: str = "http://h/k") -> str:
    return f"{base}?{urlencode(query)}"


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_known_form_resigned_is_the_same_entry(form: str) -> None:
    params, changing = FORMS[form]
    first = url({"v": "2", **params})
    again = url({"v": "2", **params, **{n: params[n] + "0" for n in changing}})
    assert entry_key(first) == entry_key(again) == "http://h/k?v=2"


@pytest.mark.parametrize("form", sorted(FORMS))
def test_an_incomplete_form_is_no_form(form: str) -> None:
    params, changing = FORMS[form]
    for missing in params:
        partial = {n: v for n, v in params.items() if n != missing}
        resigned = {**partial, **{n: partial[n] + "0" for n in changing if n in partial}}
        if form == "azure" and missing in ("sp", "sr", "st"):
            continue  # optional SAS fields: still the form
        if form == "sigv4" and missing == "X-Amz-Expires":
            continue
        if form == "goog4" and missing == "X-Goog-Expires":
            continue
        assert entry_key(url(partial)) != entry_key(url(resigned)), (form, missing)


def test_hugging_face_cdn_urls() -> None:
    cas = (
        "https://cas-bridge.xethub.hf.co/xet-bridge-us/68fd/f757?"
        + urlencode(SIGV4)
        + "&X-Amz-Content-Sha256=UNSIGNED-PAYLOAD&X-Xet-Cas-Uid=681db&response-content-disposition"
        "=inline%3B+filename%3D%22m.gguf%22&x-id=GetObject&Expires=1764706424&Policy=eyJ9"
        "&Signature=s%7Efcm__&Key-Pair-Id=K2L8F4GPSG1IFC"
    )
    assert entry_key(cas) == (
        "https://cas-bridge.xethub.hf.co/xet-bridge-us/68fd/f757?response-content-disposition"
        "=inline%3B+filename%3D%22m.gguf%22&x-id=GetObject"
    )
    lfs = "https://cdn-lfs-us-1.hf.co/repos/ab/cd/ef?response-content-disposition=x&Expires=1"
    lfs += "&Policy=eyJ9&Signature=abc&Key-Pair-Id=K2"
    assert (
        entry_key(lfs) == "https://cdn-lfs-us-1.hf.co/repos/ab/cd/ef?response-content-disposition=x"
    )
    # The requester's id is dropped on the Hub's CDN only.
    other = "https://cdn.example/x?" + urlencode(SIGV4) + "&X-Xet-Cas-Uid=1"
    assert entry_key(other) == "https://cdn.example/x?X-Xet-Cas-Uid=1"


@given(name=st.sampled_from(GENERIC), a=VALUE, b=VALUE)
def test_generic_names_are_never_collapsed(name: str, a: str, b: str) -> None:
    ka, kb = entry_key(url([(name, a)])), entry_key(url([(name, b)]))
    assert (ka == kb) == (a == b)
    assert entry_key(ka, hidden_given=True) == ka  # a key looks itself up


@given(
    pairs=st.lists(
        st.tuples(st.sampled_from([*GENERIC, "v", "Signature", "sv"]), VALUE), max_size=6
    ),
    form=st.sampled_from([None, *sorted(FORMS)]),
)
def test_keys_are_stable_idempotent_and_hide_secrets(
    pairs: list[tuple[str, str]], form: str | None
) -> None:
    params, changing = FORMS[form] if form else ({}, ())
    u = url([*pairs, *params.items()])
    key = entry_key(u)
    assert entry_key(key, hidden_given=True) == key
    if not any(n in params for n, _ in pairs):
        resigned = url([*pairs, *{**params, **{n: params[n] + "0" for n in changing}}.items()])
        assert entry_key(resigned) == key
    for segment in key.partition("?")[2].split("&"):
        name, _, value = segment.partition("=")
        if unquote_plus(name).lower() in SECRET_PARAMS:
            assert value.startswith(HIDDEN_PREFIX), key


def test_kept_parameters_are_kept_verbatim() -> None:
    assert entry_key("http://h/k?a=b+c&d=e%20f") == "http://h/k?a=b+c&d=e%20f"
    assert entry_key("http://h/k?a=1&key=x") == f"http://h/k?a=1&key={HIDDEN_PREFIX}" + (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )
    # A forged hidden value is hashed again by a download, taken as is by a lookup.
    forged = f"http://h/k?key={HIDDEN_PREFIX}" + "0" * 64
    assert entry_key(forged) != forged
    assert entry_key(forged, hidden_given=True) == forged


def test_generic_names_are_two_entries_with_two_upstream_requests(
    server: ServerProcess, source: Source
) -> None:
    source.add_file("/k", b"attacker bytes")
    with server.client() as c:
        first = c.post("/content/", json={"url": source.url("/k?key=attacker")})
        assert first.status_code == 201, first.text
        source.replace_file("/k", b"victim bytes")
        second = c.post("/content/", json={"url": source.url("/k?key=victim")})
        assert second.status_code == 201, second.text
        assert first.json()["digest"] != second.json()["digest"]
        assert first.json()["url"] != second.json()["url"]
        listing = c.get("/content/").text
        assert "attacker" not in listing and "victim" not in listing
        # The key a listing shows looks the entry up.
        assert (
            c.get(f"/content/{b64(second.json()['url'])}").json()["digest"]
            == (second.json()["digest"])
        )
    assert [r.path for r in source.requests_for("/k") if r.method == "GET"] == [
        "/k?key=attacker",
        "/k?key=victim",
    ]


def test_a_resigned_sigv4_url_is_one_entry_and_one_upstream_request(
    server: ServerProcess, source: Source
) -> None:
    source.add_file("/bucket/o", b"object bytes")
    signed = source.url("/bucket/o?" + urlencode(SIGV4))
    resigned = source.url(
        "/bucket/o?"
        + urlencode({**SIGV4, "X-Amz-Date": "20261207T130000Z", "X-Amz-Signature": "b" * 64})
    )
    with server.client() as c:
        first = c.post("/content/", json={"url": signed})
        assert first.status_code == 201, first.text
        assert first.json()["url"] == source.url("/bucket/o")
        again = c.post("/content/", json={"url": resigned})
        assert again.status_code == 200, again.text
        assert again.json()["digest"] == first.json()["digest"]
    assert len([r for r in source.requests_for("/bucket/o") if r.method == "GET"]) == 1


def test_presigned_url_secrets_are_never_stored(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    source.add_file("/bucket/model.bin", b"signed content")
    signed = source.url(
        "/bucket/model.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAXX"
        "&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=s3cr3tsig&v=2"
    )
    with server.client() as c:
        r = c.post("/content/", json={"url": signed})
        assert r.status_code == 201, r.text
        assert r.json()["url"] == source.url("/bucket/model.bin?v=2")
        # Another signature names the same entry.
        again = signed.replace("s3cr3tsig", "othersig")
        assert c.get(f"/content/{b64(again)}").status_code == 200
        assert "s3cr3tsig" not in c.get("/content/").text
    for p in cache_dir.rglob("*"):
        if p.is_file():
            assert b"s3cr3tsig" not in p.read_bytes() and b"AKIAXX" not in p.read_bytes(), p
    assert "s3cr3tsig" not in server.log()
