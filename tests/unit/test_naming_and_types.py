"""Pure values: references in the distribution grammar, digests, redaction, base64 paths."""

from __future__ import annotations

import base64
import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.api.content import decode_url
from proxy.errors import BadRequest
from proxy.naming import NAME_RE, TAG_RE, reference_for_url
from proxy.redact import redact_url
from proxy.request import parse_credentials, split_userinfo
from proxy.types import Digest, InvalidDigest

# image-spec annotations.md: the grammar of org.opencontainers.image.ref.name
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
REF_NAME_RE = rf"{_COMPONENT}(?:/{_COMPONENT})*"


@given(
    host=st.from_regex(r"[A-Za-z0-9.-]{1,30}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
    path=st.text(max_size=300),
    query=st.text(max_size=50),
)
def test_references_stay_in_the_grammar(host: str, port: int | None, path: str, query: str) -> None:
    import re
    from urllib.parse import quote

    url = f"http://{host}{':' + str(port) if port else ''}/{quote(path)}"
    if query:
        url += "?" + quote(query)
    ref = reference_for_url(url)
    name, tag = ref.rsplit(":", 1)
    assert NAME_RE.fullmatch(name), ref
    assert TAG_RE.fullmatch(tag), ref
    assert len(name) <= 255
    assert re.fullmatch(REF_NAME_RE, ref), ref


def test_runs_of_separators_fit_both_grammars() -> None:
    """distribution allows "__" and "-+", the ref.name annotation only "--":
    a name is kept within both (it was "0---1", refused at the next startup)."""
    for url, name in (
        ("http://0---1/", "0-1"),
        ("http://h/a__b", "h/a-b"),
        ("http://h/a--b", "h/a--b"),
        ("http://h/a.-_b", "h/a-b"),
    ):
        ref = reference_for_url(url)
        assert ref == f"{name}:latest"
        assert re.fullmatch(REF_NAME_RE, ref.rsplit(":", 1)[0]), ref


def test_reference_examples() -> None:
    assert reference_for_url("https://Example.com/Models/SmolLM2-Q2_K.gguf") == (
        "example.com/models/smollm2-q2_k.gguf:latest"
    )
    assert reference_for_url("http://127.0.0.1:8080/a//b/") == "127.0.0.1-8080/a/b:latest"
    a = reference_for_url("http://h/f?x=1")
    b = reference_for_url("http://h/f?x=2")
    assert a != b and a.startswith("h/f:q-")


def test_digest_parsing() -> None:
    d = Digest.parse("sha256:" + "a" * 64)
    assert str(d) == "sha256:" + "a" * 64
    for bad in (
        "sha256:" + "A" * 64,
        "sha256:abc",
        "md5:" + "a" * 32,
        "sha256:" + "a" * 64 + "\n",
        "../../etc/passwd",
        "",
    ):
        with pytest.raises(InvalidDigest):
            Digest.parse(bad)


def test_redaction() -> None:
    assert redact_url("https://u:pw@h/x") == "https://u:REDACTED@h/x"
    red = redact_url("https://h/x?X-Amz-Signature=abc&a=1&token=t")
    assert "abc" not in red and "=t" not in red and "a=1" in red


def test_userinfo_split() -> None:
    clean, creds = split_userinfo("https://al%40ice:p%3Ass@h:8443/x?y=1")
    assert clean == "https://h:8443/x?y=1"
    assert creds is not None and creds.kind == "Basic"
    assert base64.b64decode(creds.secret) == b"al@ice:p:ss"
    assert "p:ss" not in repr(creds) and creds.secret not in repr(creds)


def test_credentials_validation() -> None:
    assert parse_credentials("", None) is None
    assert parse_credentials("t", "bearer") is not None
    with pytest.raises(BadRequest):
        parse_credentials("t", "Digest")
    with pytest.raises(BadRequest):
        parse_credentials("t\r\nX: y", "Bearer")


@given(st.text(min_size=1, max_size=200))
def test_decode_url_never_raises_anything_but_bad_request(text: str) -> None:
    with contextlib.suppress(BadRequest):
        decode_url(text.encode("utf-8", "surrogatepass"))


@given(st.from_regex(r"https?://[a-z0-9.]{1,20}/[ -~]{0,80}", fullmatch=True))
def test_decode_url_roundtrip_in_every_alphabet(url: str) -> None:
    clean, _ = split_userinfo(url)
    raw = base64.b64encode(url.encode())
    for enc in (
        raw,
        raw.rstrip(b"="),
        base64.urlsafe_b64encode(url.encode()),
        base64.urlsafe_b64encode(url.encode()).rstrip(b"="),
    ):
        assert decode_url(enc) == clean
