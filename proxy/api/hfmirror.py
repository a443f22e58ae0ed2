"""A read-only Hugging Face Hub mirror under ``/hf``, served from cached ``hf://`` entries."""

from __future__ import annotations

from typing import Any

from twisted.python.threadpool import ThreadPool

from proxy.api.errors import json_error
from proxy.cache.store import Store


class HfMirror:
    """``HF_ENDPOINT=http://<node>:8050/hf`` for ``huggingface_hub``."""

    def __init__(self, store: Store, pool: ThreadPool) -> None:
        self.store = store
        self.pool = pool

    def render(self, request: Any, path: bytes) -> Any:
        return json_error(request, 404, "NOT_FOUND", "no such endpoint")
