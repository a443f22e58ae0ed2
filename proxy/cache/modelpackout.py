"""ModelPack out: ``hf://``, ``ollama://``, object-store and ``file://`` entries as
CNCF ModelPack artifacts under ``/v2``.

When such an entry is stored, a second manifest is written for it, once, next to
its own (both are blobs in ``blobs/``, kept alive by the entry): an OCI image
manifest of the ModelPack specification (``modelpack/model-spec``,
``docs/spec.md``, ``specs-go/v1/mediatype.go``, ``specs-go/v1/annotations.go``,
``schema/config-schema.json``):

* ``artifactType`` ``application/vnd.cncf.model.manifest.v1+json``; its config a
  ``application/vnd.cncf.model.config.v1+json`` blob ``{"descriptor": {...},
  "config": {...}, "modelfs": {"type": "layers", "diffIds": [...]}}``, valid
  against the spec's JSON schema (the diffIds of raw layers are their digests);
* one raw layer per file, the entry's own blob (no byte is copied), typed
  ``application/vnd.cncf.model.<weight|weight.config|doc|code|dataset>.v1.raw``
  by the file's name, with ``org.cncf.model.filepath`` (its path in the model),
  ``org.opencontainers.image.title`` (the same path, for ORAS clients) and
  ``org.cncf.model.file.mediatype.untested: "true"`` (the kind is inferred).

It is served under the name the entry's annotations record
(:data:`ANNOTATION_NAME`), see :func:`name_for`: ``hf/<org>/<repo>:<revision>``
(``hf/datasets/<org>/<repo>``, ``hf/spaces/...``), ``ollama/<namespace>/<model>:<tag>``,
``s3/<bucket>/<prefix>:latest`` (``gs/``, ``azure/<account>/``) and
``file/<path>:latest``; only for a whole repository, directory or prefix (a single file
keeps its one manifest). Pure functions: the caller stores the bytes.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

import attrs

from proxy.cache.modelpack import ANNOTATION_FILEPATH, ARTIFACT_TYPE, MEDIA_TYPE_CONFIG
from proxy.naming import TAG_RE, name_from_parts
from proxy.types import (
    ANNOTATION_HF_COMMIT,
    ANNOTATION_HF_REPO,
    ANNOTATION_HF_REPO_TYPE,
    ANNOTATION_HF_REVISION,
    ANNOTATION_TITLE,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Digest,
)

# Recorded on the entry's descriptor in index.json.
ANNOTATION_NAME = "io.nekko.storage-manager.modelpack.name"
ANNOTATION_MANIFEST = "io.nekko.storage-manager.modelpack.manifest"
ANNOTATION_SIZE = "io.nekko.storage-manager.modelpack.size"
ANNOTATION_UNTESTED = "org.cncf.model.file.mediatype.untested"
SCHEMES = ("hf", "ollama", "s3", "gs", "azure", "file")

# Ollama's layer media types (server/images.go) and the file each is in a model.
OLLAMA_FILES = {
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "projector.gguf",
    "application/vnd.ollama.image.adapter": "adapter.gguf",
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.params": "params.json",
    "application/vnd.ollama.image.messages": "messages.json",
    "application/vnd.ollama.image.license": "LICENSE",
}

_WEIGHT = re.compile(
    r".*\.(safetensors|gguf|ggml|bin|pt|pth|ckpt|onnx|h5|msgpack|pb|tflite|mlmodel|npz|nemo|"
    r"pdparams|ot)",
    re.IGNORECASE,
)
_DOC = re.compile(r"(.*\.(md|rst|pdf|html?)|(license|licence|notice|copying|readme)(\..*)?)", re.I)
_CODE = re.compile(r".*\.(py|sh|ipynb|js|ts|go|rs|c|cc|cpp|h|cu|lua|jinja|j2)", re.IGNORECASE)
_DATASET = re.compile(r".*\.(parquet|arrow|csv|tsv|jsonl|avro|tfrecord)", re.IGNORECASE)
_FORMATS = {".safetensors": "safetensors", ".gguf": "gguf", ".onnx": "onnx", ".bin": "pytorch"}


@attrs.frozen
class Made:
    """The ModelPack artifact of one entry: its name, config and manifest bytes."""

    name: str  # "<name>:<tag>"
    config: bytes
    manifest: bytes


def layer_kind(path: str) -> str:
    """The ModelPack layer kind of a file, by its name (modctl's rule of thumb)."""
    base = posixpath.basename(path)
    if _WEIGHT.fullmatch(base):
        return "weight"
    if _DOC.fullmatch(base):
        return "doc"
    if _CODE.fullmatch(base):
        return "code"
    if _DATASET.fullmatch(base):
        return "dataset"
    return "weight.config"


def _tag(text: str) -> str:
    tag = re.sub(r"[^\w.-]+", "-", text).lstrip(".-")[:128]
    return tag if TAG_RE.fullmatch(tag) else "latest"


def name_for(url: str, annotations: Mapping[str, str]) -> str | None:
    """The ``name:tag`` an entry's ModelPack artifact is served under, or None."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        return None
    if scheme == "hf":
        repo = annotations.get(ANNOTATION_HF_REPO)
        if not repo:
            return None
        kind = annotations.get(ANNOTATION_HF_REPO_TYPE, "model")
        head = ["hf"] + ([f"{kind}s"] if kind in ("dataset", "space") else [])
        revision = annotations.get(ANNOTATION_HF_REVISION) or "main"
        return f"{name_from_parts([*head, *repo.split('/')])}:{_tag(revision)}"
    path = unquote(parts.path)
    if scheme == "ollama":
        name, _, tag = path.strip("/").partition(":")
        return f"{name_from_parts(['ollama', *name.split('/')])}:{_tag(tag or 'latest')}"
    head = [scheme] if scheme == "file" else [scheme, parts.netloc]
    return f"{name_from_parts([*head, *path.split('/')])}:latest"


def _files(url: str, files: Sequence[Descriptor]) -> list[tuple[str, Descriptor]]:
    """(path in the model, blob) of every file the artifact has, in order."""
    out: list[tuple[str, Descriptor]] = []
    seen: set[str] = set()
    for f in files:
        if url.startswith("ollama://"):
            path = OLLAMA_FILES.get(f.media_type)
        else:
            path = f.annotations.get(ANNOTATION_TITLE)
        if not path or path in seen:
            continue
        seen.add(path)
        out.append((path, f))
    return out


def make(
    url: str,
    files: Sequence[Descriptor],
    annotations: Mapping[str, str],
    created: str,
    collection: bool,
) -> Made | None:
    """The ModelPack artifact of an entry (None: not a kind served so, or no files).
    ``collection``: the URL names a set of files (a repository, a directory, a prefix),
    not one file of it; only Ollama models and collections are served so."""
    if not collection and not url.startswith("ollama://"):
        return None
    name = name_for(url, annotations)
    named = _files(url, files)
    if name is None or not named:
        return None
    layers = []
    for path, f in named:
        layers.append(
            {
                "mediaType": f"application/vnd.cncf.model.{layer_kind(path)}.v1.raw",
                "digest": str(f.digest),
                "size": f.size,
                "annotations": {
                    ANNOTATION_FILEPATH: path,
                    ANNOTATION_TITLE: path,
                    ANNOTATION_UNTESTED: "true",
                },
            }
        )
    descriptor: dict[str, str] = {"name": name.rsplit(":", 1)[0], "sourceURL": url}
    if created:
        descriptor["createdAt"] = created
    revision = annotations.get(ANNOTATION_HF_COMMIT)
    if revision:
        descriptor["revision"] = revision
    model: dict[str, str] = {}
    formats = {
        _FORMATS[ext]
        for path, _ in named
        if (ext := posixpath.splitext(path)[1].lower()) in _FORMATS and layer_kind(path) == "weight"
    }
    if len(formats) == 1:
        model["format"] = formats.pop()
    config = {
        "descriptor": descriptor,
        "config": model,
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
    }
    config_bytes = json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": str(Digest.of(config_bytes)),
            "size": len(config_bytes),
        },
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": created} if created else {},
    }
    if not manifest["annotations"]:
        del manifest["annotations"]
    return Made(name, config_bytes, json.dumps(manifest, indent=2).encode() + b"\n")


def recorded(annotations: Mapping[str, str]) -> tuple[str, Descriptor] | None:
    """The name and manifest descriptor an entry's annotations record, or None."""
    name = annotations.get(ANNOTATION_NAME)
    digest = annotations.get(ANNOTATION_MANIFEST)
    size = annotations.get(ANNOTATION_SIZE, "")
    if not name or not digest or not size.isdigit():
        return None
    try:
        parsed = Digest.parse(digest)
    except ValueError:
        return None
    return name, Descriptor(
        MEDIA_TYPE_IMAGE_MANIFEST, parsed, int(size), artifact_type=ARTIFACT_TYPE
    )
