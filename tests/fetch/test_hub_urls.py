"""hf:// and ollama:// URL grammar."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequest
from proxy.fetch.hf import HfUrl, parse_hf_url
from proxy.fetch.ollama import parse_ollama_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "hf:///unsloth/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q2_K.gguf",
            HfUrl(
                "huggingface.co",
                "model",
                "unsloth/SmolLM2-135M-Instruct-GGUF",
                "main",
                "SmolLM2-135M-Instruct-Q2_K.gguf",
            ),
        ),
        (
            "huggingface://hub.local:8080/org/repo@v1.0/sub/dir/w.safetensors",
            HfUrl("hub.local:8080", "model", "org/repo", "v1.0", "sub/dir/w.safetensors"),
        ),
        ("hf:///org/repo", HfUrl("huggingface.co", "model", "org/repo", "main", None)),
        (
            "hf:///org/repo@refs%2Fpr%2F1/",
            HfUrl("huggingface.co", "model", "org/repo", "refs/pr/1", None),
        ),
        (
            "hf:///datasets/org/data/train.parquet",
            HfUrl("huggingface.co", "dataset", "org/data", "main", "train.parquet"),
        ),
    ],
)
def test_hf_urls(url: str, expected: HfUrl) -> None:
    assert parse_hf_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "hf:///org",
        "hf:///org/repo/../../etc/passwd",
        "hf:///org/repo/a//b",
        "hf:///o/r@/f",
        "hf:///-bad/repo",
        "hf:///org/repo?x=1",
        "hf://bad_host/o/r",
        "hf:///o/r@a%2F..%2Fb/f",
    ],
)
def test_bad_hf_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_hf_url(url)


@pytest.mark.parametrize(
    ("url", "registry", "repo", "tag"),
    [
        ("ollama:///tinyllama", "registry.ollama.ai", "library/tinyllama", "latest"),
        ("ollama://ollama.com/library/llama3.2:1b", "registry.ollama.ai", "library/llama3.2", "1b"),
        (
            "ollama:///user/model:8b-instruct-q4_K_M",
            "registry.ollama.ai",
            "user/model",
            "8b-instruct-q4_K_M",
        ),
        ("ollama://127.0.0.1:5000/ns/m:t", "127.0.0.1:5000", "ns/m", "t"),
    ],
)
def test_ollama_urls(url: str, registry: str, repo: str, tag: str) -> None:
    ref = parse_ollama_url(url)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repo, tag)
    assert ref.name == f"{registry}/{repo}:{tag}"


@pytest.mark.parametrize(
    "url",
    [
        "ollama:///",
        "ollama:///a/b/c",
        "ollama:///Upper",
        "ollama:///m:bad tag",
        "ollama:///m?x=1",
        "ollama:///../etc",
    ],
)
def test_bad_ollama_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_ollama_url(url)
