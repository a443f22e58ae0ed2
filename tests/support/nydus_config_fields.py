"""Field names of nydusd's configuration, as Python data, to check ``conf/nydusd/*.json``.

Source: dragonflyoss/nydus, ``api/src/config.rs`` (crate ``nydus-api``), the serde structs that
``nydusd --config`` deserialises. The legacy JSON form (what ``conf/nydusd`` uses, and what
nydus-snapshotter writes) is ``RafsConfig`` at the top level, converted to ``ConfigV2`` by
``TryFrom<RafsConfig> for ConfigV2``. Names below are the *serialised* names (after
``#[serde(rename = ...)]``). None of these structs has ``deny_unknown_fields``: nydus silently
ignores a misspelt key, which is why the configs are checked against these lists.

Each name set says which struct it copies; ``REQUIRED`` lists the fields without a serde
default (deserialisation fails without them), ``DEFAULTS`` the defaults of the others we rely on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "BACKEND_CONFIG",
    "BACKEND_TYPES",
    "CACHE_CONFIG",
    "CACHE_TYPES",
    "DEFAULTS",
    "FACTORY_CONFIG",
    "FILE_CACHE_CONFIG",
    "FS_PREFETCH_CONTROL",
    "LEGACY_SCHEMA",
    "MIRROR_CONFIG",
    "PROXY_CONFIG",
    "RAFS_CONFIG",
    "RAFS_MODES",
    "REGISTRY_CONFIG",
    "REQUIRED",
    "SOURCE",
    "check_legacy_config",
]

SOURCE: Final = "dragonflyoss/nydus: api/src/config.rs"

# struct RafsConfig (legacy, private): the top level of a v1 JSON config.
RAFS_CONFIG: Final = frozenset(
    {
        "device",  # FactoryConfig
        "mode",  # "direct" | "cached"
        "digest_validate",  # -> RafsConfigV2.validate
        "iostats_files",
        "fs_prefetch",  # FsPrefetchControl
        "enable_xattr",
        "access_pattern",
        "latest_read_files",
        "amplify_io",  # -> RafsConfigV2.batch_size
    }
)

# struct FactoryConfig (legacy): "device".
FACTORY_CONFIG: Final = frozenset({"id", "backend", "cache"})

# struct BackendConfig (legacy): "device.backend"; backend_type is renamed "type",
# backend_config (a serde_json::Value, parsed by type) is renamed "config".
BACKEND_CONFIG: Final = frozenset({"type", "config"})

# struct CacheConfig (legacy): "device.cache"; cache_type -> "type", cache_compressed ->
# "compressed", cache_config -> "config". Its cache_validate and prefetch_config are
# #[serde(skip_deserializing)]: not read from a v1 file.
CACHE_CONFIG: Final = frozenset({"type", "compressed", "config"})

# struct FileCacheConfig: "device.cache.config" when the cache type is blobcache / filecache.
# (enable_encryption, enable_convergent_encryption and encryption_key are in newer releases.)
FILE_CACHE_CONFIG: Final = frozenset(
    {
        "work_dir",
        "disable_indexed_map",
        "enable_encryption",
        "enable_convergent_encryption",
        "encryption_key",
    }
)

# struct FsPrefetchControl (legacy): "fs_prefetch".
FS_PREFETCH_CONTROL: Final = frozenset(
    {"enable", "threads_count", "merging_size", "bandwidth_rate", "prefetch_all"}
)

# struct RegistryConfig: "device.backend.config" when device.backend.type == "registry".
REGISTRY_CONFIG: Final = frozenset(
    {
        "scheme",
        "host",
        "repo",
        "auth",
        "skip_verify",
        "timeout",
        "connect_timeout",
        "retry_limit",
        "registry_token",
        "blob_url_scheme",
        "blob_redirected_host",
        "proxy",  # ProxyConfig
        "mirrors",  # Vec<MirrorConfig>
    }
)

# struct ProxyConfig: "device.backend.config.proxy".
PROXY_CONFIG: Final = frozenset({"url", "ping_url", "fallback", "check_interval", "use_http"})

# struct MirrorConfig: each of "device.backend.config.mirrors" (auth_through: older releases).
MIRROR_CONFIG: Final = frozenset(
    {"host", "ping_url", "headers", "auth_through", "health_check_interval", "failure_limit"}
)

BACKEND_TYPES: Final = frozenset({"localfs", "localdisk", "oss", "s3", "registry"})
"""Backend types ``TryFrom<&BackendConfig> for BackendConfigV2`` accepts."""

CACHE_TYPES: Final = frozenset({"", "blobcache", "filecache", "fscache"})
"""Cache types ``TryFrom<&CacheConfig> for CacheConfigV2`` accepts."""

RAFS_MODES: Final = frozenset({"direct", "cached"})
"""``RafsConfigV2::validate`` accepts only these."""

REQUIRED: Final[Mapping[str, frozenset[str]]] = {
    "": frozenset({"device", "mode"}),
    "device": frozenset({"backend"}),
    "device.backend": frozenset({"type", "config"}),
    "device.backend.config[registry]": frozenset({"host", "repo"}),
}
"""Fields without ``#[serde(default)]``, by path (``RegistryConfig::host``/``repo`` must also be
non-empty for ``BackendConfigV2::validate``)."""

DEFAULTS: Final[Mapping[str, Any]] = {
    "RegistryConfig.scheme": "https",
    "RegistryConfig.timeout": 5,
    "RegistryConfig.connect_timeout": 5,
    "RegistryConfig.retry_limit": 0,
    "ProxyConfig.fallback": True,
    "ProxyConfig.check_interval": 5,
    "ProxyConfig.use_http": False,
    "FsPrefetchControl.threads_count": 8,
    "FsPrefetchControl.merging_size": 128 * 1024,
    "FsPrefetchControl.prefetch_all": True,
    "RafsConfig.amplify_io": 128 * 1024,
}

LEGACY_SCHEMA: Final[Mapping[str, frozenset[str]]] = {
    "": RAFS_CONFIG,
    "device": FACTORY_CONFIG,
    "device.backend": BACKEND_CONFIG,
    "device.backend.config[registry]": REGISTRY_CONFIG,
    "device.backend.config.proxy": PROXY_CONFIG,
    "device.backend.config.mirrors[]": MIRROR_CONFIG,
    "device.cache": CACHE_CONFIG,
    "device.cache.config[blobcache]": FILE_CACHE_CONFIG,
    "fs_prefetch": FS_PREFETCH_CONTROL,
}
"""Which struct each object of a v1 JSON config is (``[type]``: only for that backend/cache)."""


def _keys(obj: Any, where: str, allowed: frozenset[str], problems: list[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        problems.append(f"{where or '(top level)'}: expected an object")
        return {}
    for key in obj:
        if key not in allowed:
            problems.append(f"{where or '(top level)'}: unknown field {key!r}")
    return obj


def check_legacy_config(doc: Mapping[str, Any]) -> list[str]:
    """Problems with a v1 (``device.backend...``) nydusd config: unknown or missing fields,
    bad types / modes. Only the registry backend and the blobcache / filecache caches are
    checked in depth. An empty list means none were found."""
    problems: list[str] = []
    top = _keys(dict(doc), "", RAFS_CONFIG, problems)
    problems += [f"(top level): missing {m!r}" for m in sorted(REQUIRED[""] - set(top))]
    if top.get("mode") not in RAFS_MODES:
        problems.append(f"mode: {top.get('mode')!r} is not one of {sorted(RAFS_MODES)}")
    device = _keys(top.get("device", {}), "device", FACTORY_CONFIG, problems)
    problems += [f"device: missing {m!r}" for m in sorted(REQUIRED["device"] - set(device))]
    backend = _keys(device.get("backend", {}), "device.backend", BACKEND_CONFIG, problems)
    missing = REQUIRED["device.backend"] - set(backend)
    problems += [f"device.backend: missing {m!r}" for m in sorted(missing)]
    btype = backend.get("type")
    if btype not in BACKEND_TYPES:
        problems.append(f"device.backend.type: {btype!r} is not one of {sorted(BACKEND_TYPES)}")
    if btype == "registry":
        where = "device.backend.config"
        reg = _keys(backend.get("config", {}), where, REGISTRY_CONFIG, problems)
        for field in sorted(REQUIRED["device.backend.config[registry]"]):
            if not reg.get(field):
                problems.append(f"{where}: missing or empty {field!r}")
        if reg.get("scheme", "https") not in ("http", "https"):
            problems.append(f"{where}.scheme: {reg.get('scheme')!r}")
        if "proxy" in reg:
            proxy = _keys(reg["proxy"], f"{where}.proxy", PROXY_CONFIG, problems)
            if proxy.get("url") and reg.get("mirrors"):
                problems.append(f"{where}: proxy and mirrors cannot be configured together")
        for i, mirror in enumerate(reg.get("mirrors", [])):
            m = _keys(mirror, f"{where}.mirrors[{i}]", MIRROR_CONFIG, problems)
            if "host" not in m:
                problems.append(f"{where}.mirrors[{i}]: missing 'host'")
    if "cache" in device:
        cache = _keys(device["cache"], "device.cache", CACHE_CONFIG, problems)
        ctype = cache.get("type", "")
        if ctype not in CACHE_TYPES:
            problems.append(f"device.cache.type: {ctype!r} is not one of {sorted(CACHE_TYPES)}")
        if ctype in ("blobcache", "filecache"):
            fc = _keys(cache.get("config", {}), "device.cache.config", FILE_CACHE_CONFIG, problems)
            if not fc.get("work_dir"):
                problems.append("device.cache.config: missing or empty 'work_dir'")
    if "fs_prefetch" in top:
        fp = _keys(top["fs_prefetch"], "fs_prefetch", FS_PREFETCH_CONTROL, problems)
        if fp.get("enable") and not 0 < fp.get("threads_count", 8) <= 1024:
            problems.append("fs_prefetch.threads_count: must be 1..1024 when enabled")
    return problems
