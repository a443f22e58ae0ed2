"""What a model artifact's manifest says: CNCF ModelPack and KitOps ModelKit.

The names are those of the ModelPack specification (``modelpack/model-spec``,
``specs-go/v1/mediatype.go``, ``specs-go/v1/annotations.go``,
``specs-go/v1/config.go`` and ``schema/config-schema.json``), copied, not
guessed:

* the manifest's ``artifactType`` ``application/vnd.cncf.model.manifest.v1+json``
  and its config ``application/vnd.cncf.model.config.v1+json``, a JSON object
  ``{"descriptor": {...}, "modelfs": {...}, "config": {...}}``;
* layers ``application/vnd.cncf.model.<kind>.v1.<format>`` with ``<kind>`` one of
  ``weight``, ``weight.config``, ``doc``, ``code``, ``dataset`` and ``<format>``
  ``raw`` (the file itself) or ``tar``, ``tar+gzip``, ``tar+zstd`` (an archive
  whose entries are named relative to the model's root, as modctl writes them);
* the layer annotation ``org.cncf.model.filepath``: the file's path in the model.

KitOps ModelKits (``application/vnd.kitops.modelkit.<kind>.v1.tar[+gzip|+zstd]``)
are tar layers named the same way. Everything here is pure: no disk, no network.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from proxy.types import ANNOTATION_TITLE, Descriptor

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.cncf.model.config.v1+json"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
LAYER_KINDS = ("weight", "weight.config", "doc", "code", "dataset")
FORMATS = ("raw", "tar", "tar+gzip", "tar+zstd")
MAX_CONFIG = 1024 * 1024  # a model config read for the /content answer

_MODELPACK_LAYER = re.compile(
    r"application/vnd\.cncf\.model\.(weight|weight\.config|doc|code|dataset)\.v1\."
    r"(raw|tar|tar\+gzip|tar\+zstd)"
)
_MODELKIT_LAYER = re.compile(
    r"application/vnd\.kitops\.modelkit\.[a-z]+\.v1\.(tar|tar\+gzip|tar\+zstd)"
)
# The config's fields reported in /content answers (ModelConfig and ModelDescriptor).
CONFIG_FIELDS = ("architecture", "format", "paramSize", "precision", "quantization")
DESCRIPTOR_FIELDS = ("name", "family", "version", "revision", "vendor", "title", "description")


@attrs.frozen
class Layer:
    """How a layer becomes files: ``archive`` is None for a file (named by
    ``path``), else the archive's compression ("" for a plain tar)."""

    path: str | None
    archive: str | None


def layer(desc: Descriptor) -> Layer:
    """What ``desc`` is in a model directory (a path may still be unsafe:
    :func:`proxy.cache.grammar.title_parts` decides)."""
    mt = desc.media_type
    found = _MODELPACK_LAYER.fullmatch(mt)
    fmt = found.group(2) if found else None
    if fmt is None and (kit := _MODELKIT_LAYER.fullmatch(mt)) is not None:
        fmt = kit.group(1)
    path = desc.annotations.get(ANNOTATION_FILEPATH) or desc.annotations.get(ANNOTATION_TITLE)
    if fmt is None or fmt == "raw":
        return Layer(path, None)
    return Layer(path, fmt.partition("+")[2])


def is_modelpack(manifest: dict[str, Any]) -> bool:
    """A ModelPack manifest: its ``artifactType`` or its config's media type says so."""
    config = manifest.get("config")
    return manifest.get("artifactType") == ARTIFACT_TYPE or (
        isinstance(config, dict) and config.get("mediaType") == MEDIA_TYPE_CONFIG
    )


def is_modelpack_files(files: tuple[Descriptor, ...] | list[Descriptor]) -> bool:
    """A pull whose blobs include a ModelPack config (what a fetch result shows)."""
    return any(f.media_type == MEDIA_TYPE_CONFIG for f in files)


def summary(config: Any) -> dict[str, Any]:
    """The fields of a ModelPack config a /content answer reports: the
    config's execution parameters and the descriptor's names, strings only."""
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    for section, fields in (("config", CONFIG_FIELDS), ("descriptor", DESCRIPTOR_FIELDS)):
        part = config.get(section)
        if isinstance(part, dict):
            for f in fields:
                value = part.get(f)
                if isinstance(value, str) and value:
                    out[f] = value[:1000]
    params = config.get("config")
    caps = params.get("capabilities") if isinstance(params, dict) else None
    if isinstance(caps, dict):
        out["capabilities"] = {
            k: v for k, v in caps.items() if isinstance(v, bool | str | list) and len(str(v)) < 1000
        }
    return out
