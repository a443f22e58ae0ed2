"""Which store a ``--shared-store`` location names: the one place that knows
every implementation (:mod:`proxy.shared.s3`, :mod:`proxy.shared.gcs`,
:mod:`proxy.shared.azure`), so they and the interface they implement
(:mod:`proxy.shared.store`) do not import each other."""

from __future__ import annotations

from proxy.fetch.proxyenv import ProxyConfig
from proxy.fetch.s3 import Signer
from proxy.fetch.transfer import HttpClient
from proxy.shared.azure import AzureStore
from proxy.shared.gcs import GcsStore
from proxy.shared.location import StoreLocation
from proxy.shared.s3 import S3Store
from proxy.shared.store import Guarded, SharedStore, outbound


def open_store(
    location: StoreLocation,
    client: HttpClient,
    proxies: ProxyConfig | None = None,
    s3_addressing_style: str = "auto",
) -> SharedStore:
    """The store ``location`` names (no request is made yet), every failure
    of it a :class:`SharedStoreError`."""
    sender = outbound(client, proxies)
    inner: SharedStore
    if location.kind == "s3":
        inner = S3Store(location, client, sender, Signer(s3_addressing_style))
    elif location.kind == "gs":
        inner = GcsStore(location, client, sender)
    else:
        inner = AzureStore(location, client, sender)
    return Guarded(inner)
