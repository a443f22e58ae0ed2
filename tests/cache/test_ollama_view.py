"""``<cache>/views/ollama`` is an Ollama models directory (issue 23, item 2).

``OLLAMA_MODELS=<cache>/views/ollama ollama serve`` must list and run the
cached models offline. The real binary cannot be installed here, so the layout
is checked against the rules of ollama's source (github.com/ollama/ollama),
read for this test:

* ``server/modelpath.go`` (at d6dd430, before it moved to ``manifest/paths.go``):
  ``GetManifestPath`` is ``$OLLAMA_MODELS/manifests`` and a model's manifest is
  ``filepath.Join(manifests, name.Filepath())``; ``GetBlobsPath`` accepts only
  ``^sha256[:-][0-9a-fA-F]{64}$`` and joins ``$OLLAMA_MODELS/blobs`` with the
  digest's ``:`` replaced by ``-``.
* ``types/model/name.go``: ``Name.Filepath`` joins ``Host``, ``Namespace``,
  ``Model``, ``Tag`` (default host ``registry.ollama.ai``, namespace ``library``).
* ``server/manifest.go`` (now ``manifest/manifest.go``): ``Manifests`` lists
  ``filepath.Glob(manifests/*/*/*/*)`` and ``os.Stat``s each (links followed);
  ``ParseNamedManifest`` opens the path, decodes the JSON and takes the sha256
  of the bytes read as the manifest's digest.
* ``server/images.go``: ``GetModel`` opens ``GetBlobsPath(config.digest)`` and
  each layer's, the ``application/vnd.ollama.image.model`` layer being the
  model file; ``PruneLayers`` removes from ``blobs/`` any name that is not a
  valid digest (so nothing else may live there).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from pathlib import Path

from tests.conftest import b64
from tests.support.ollama_registry import OllamaRegistry
from tests.support.server import ServerProcess

BLOB_NAME = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")  # GetBlobsPath's pattern
LAYERS = [
    ("application/vnd.ollama.image.model", b"GGUF" + os.urandom(2000)),
    ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
    ("application/vnd.ollama.image.params", b'{"stop": ["</s>"]}'),
]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_model(models: Path, host: str, namespace: str, model: str, tag: str) -> dict[str, bytes]:
    """What ``GetModel`` reads: the manifest by name, then config and layers by digest."""
    path = Path(os.path.join(models, "manifests", host, namespace, model, tag))
    data = path.read_bytes()
    manifest = json.loads(data)
    out = {"manifest": data}
    for desc in [manifest["config"], *manifest["layers"]]:
        name = desc["digest"].replace(":", "-")
        assert BLOB_NAME.fullmatch(name)
        blob = (models / "blobs" / name).read_bytes()
        assert _sha(blob) == desc["digest"] and len(blob) == desc["size"]
        out[desc["mediaType"]] = blob
    return out


def test_ollama_models_directory(server: ServerProcess, cache_dir: Path) -> None:
    models = cache_dir / "views" / "ollama"
    with OllamaRegistry() as reg:
        first = reg.add_model("library", "tinyllama", "latest", LAYERS)
        second = reg.add_model("team", "coder", "q4", LAYERS[:1])
        urls = [f"ollama://{reg.host}/tinyllama", f"ollama://{reg.host}/team/coder:q4"]
        with server.client() as c:
            for url in urls:
                r = c.post("/content/", json={"url": url})
                assert r.status_code == 201, r.text
                assert r.json()["ollamaModels"] == str(models)
        host = reg.host  # 127.0.0.1:<port>, as Name.Host keeps it

    # Manifests(): exactly the cached models, at host/namespace/model/tag.
    found = sorted(
        os.path.relpath(p, models / "manifests")
        for p in glob.glob(os.path.join(models, "manifests", "*", "*", "*", "*"))
        if not os.path.isdir(p)
    )
    assert found == sorted([f"{host}/library/tinyllama/latest", f"{host}/team/coder/q4"])
    model = read_model(models, host, "library", "tinyllama", "latest")
    assert _sha(model["manifest"]) == first  # ParseNamedManifest's digest
    assert model["application/vnd.ollama.image.model"] == LAYERS[0][1]
    assert model["application/vnd.ollama.image.template"] == LAYERS[1][1]
    assert _sha(read_model(models, host, "team", "coder", "q4")["manifest"]) == second
    # PruneLayers would delete any other name in blobs/.
    assert all(BLOB_NAME.fullmatch(n) for n in os.listdir(models / "blobs"))

    # Removing one model removes its manifest; the shared model layer stays for the other.
    with server.client() as c:
        assert c.delete(f"/content/{b64(urls[0])}").status_code == 204
    assert not (models / "manifests" / host / "library").exists()
    names = set(os.listdir(models / "blobs"))
    assert "sha256-" + hashlib.sha256(LAYERS[0][1]).hexdigest() in names
    assert "sha256-" + hashlib.sha256(LAYERS[1][1]).hexdigest() not in names
    # Rebuilt at startup after the view is lost.
    server.stop()
    for p in (models / "blobs").iterdir():
        p.unlink()
    server.start()
    assert _sha(read_model(models, host, "team", "coder", "q4")["manifest"]) == second
