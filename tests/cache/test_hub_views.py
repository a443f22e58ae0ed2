"""The hub cache views of two Hubs are kept apart."""

from __future__ import annotations

import json

from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess


def test_hf_views_of_another_hub_are_kept_apart(server: ServerProcess) -> None:
    with FakeHub() as hub:
        hub.add_repo("org/r")
        hub.add_file("org/r", "a", b"file a")
        hub.add_file("org/r", "a2/b", b"file b")
        hub.commit("org/r")
        host = hub.host
        with server.client() as c:
            assert c.post("/content/", json={"url": f"hf://{host}/org/r/a"}).status_code == 201
            assert c.post("/content/", json={"url": f"hf://{host}/org/r"}).status_code == 201
            assert c.post("/content/", json={"url": "http://127.0.0.1:9/x"}).status_code == 502
            body = c.get("/content/").json()
            # The failed download is listed with its error (issue 19); the two stored stay.
            states = sorted(e["state"] for e in body["entries"])
            assert states == ["complete", "complete", "failed"], states
            view = json.dumps(body)
            assert "huggingface@127.0.0.1" in view
