"""Which layers become files in a model directory, and how (issue 23, item 3).

The media types are those of modelpack/model-spec ``specs-go/v1/mediatype.go``
(and KitOps' ``application/vnd.kitops.modelkit.<kind>.v1.tar[+gzip]``); a
container image's layers are never unpacked: they are root filesystems.
"""

from __future__ import annotations

import pytest

from proxy.cache import modelpack, modelviews
from proxy.types import Descriptor, Digest

D = Digest("0" * 64)


@pytest.mark.parametrize("kind", ["weight", "weight.config", "doc", "code", "dataset"])
@pytest.mark.parametrize(
    ("fmt", "archive"), [("raw", None), ("tar", ""), ("tar+gzip", "gzip"), ("tar+zstd", "zstd")]
)
def test_modelpack_layer_media_types(kind: str, fmt: str, archive: str | None) -> None:
    desc = Descriptor(
        f"application/vnd.cncf.model.{kind}.v1.{fmt}", D, 1, {"org.cncf.model.filepath": "a/b"}
    )
    assert modelpack.layer(desc) == modelpack.Layer("a/b", archive)


@pytest.mark.parametrize(
    ("media_type", "archive"),
    [
        ("application/vnd.kitops.modelkit.model.v1.tar+gzip", "gzip"),
        ("application/vnd.kitops.modelkit.modelpart.v1.tar", ""),
        ("application/vnd.kitops.modelkit.docs.v1.tar+zstd", "zstd"),
        ("application/vnd.oci.image.layer.v1.tar+gzip", None),  # an image layer: not unpacked
        ("application/vnd.cncf.model.weight.v2.tar", None),  # not a version of the spec
        ("application/vnd.cncf.model.weights.v1.tar", None),  # nor a kind of it
    ],
)
def test_other_layers(media_type: str, archive: str | None) -> None:
    desc = Descriptor(media_type, D, 1, {"org.opencontainers.image.title": "t"})
    assert modelpack.layer(desc) == modelpack.Layer("t", archive)


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ("a", "b")), ("./a/", ("a",)), (".", None), ("./", None), ("a//b", "refused")],
)
def test_member_names(name: str, parts: object) -> None:
    if parts == "refused":
        with pytest.raises(modelviews.Refused):
            modelviews.member_parts(name)
    else:
        assert modelviews.member_parts(name) == parts


def test_config_summary_keeps_strings_of_the_spec_fields() -> None:
    config = {
        "descriptor": {"name": "n", "family": 3, "licenses": ["MIT"]},
        "modelfs": {"type": "layers", "diffIds": ["sha256:" + "0" * 64]},
        "config": {
            "architecture": "transformer",
            "quantization": "awq",
            "capabilities": {"reasoning": True},
        },
    }
    assert modelpack.summary(config) == {
        "architecture": "transformer",
        "quantization": "awq",
        "name": "n",
        "capabilities": {"reasoning": True},
    }
    assert modelpack.summary(["not", "an", "object"]) == {}


def test_config_summary_of_a_malformed_config() -> None:
    assert modelpack.summary({"config": ["x"], "descriptor": "y"}) == {}
