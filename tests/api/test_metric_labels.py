"""``/metrics`` keeps a bounded number of series whatever clients send:
label values that come from a request (method, path) fall into a fixed set,
with ``other`` for the rest."""

from __future__ import annotations

import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess


def send_raw(srv: ServerProcess, request: bytes) -> bytes:
    host, port = srv.base_url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def request_series(srv: ServerProcess) -> list[dict[str, str]]:
    with srv.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    return [
        s.labels
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "storage_manager_http_requests_total"
    ]


def test_made_up_methods_and_paths_share_one_other_series(cache_dir: Path) -> None:
    count = 300
    with ServerProcess(cache_dir) as srv:
        for i in range(count):
            answer = send_raw(
                srv,
                b"M%07d /healthz/x%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % (i, i),
            )
            assert answer.startswith(b"HTTP/1.1 "), answer[:100]
            assert int(answer[9:12]) < 500, answer[:100]
        series = request_series(srv)
    methods = {s["method"] for s in series}
    assert not any(m.startswith("M0") for m in methods), sorted(methods)[:5]
    others = [s for s in series if s["method"] == "other"]
    assert len(others) == 1, others
    assert others[0]["route"] == "healthz"
