"""Registry authentication: challenges, the Bearer token flow, Basic.

A registry answers 401 with ``WWW-Authenticate``. For ``Bearer
realm=...,service=...,scope=...`` a token is fetched from the realm --
anonymously, or with the request's credentials (Basic ``user:pass``, or the
Bearer token itself) -- and used for the following requests. For ``Basic``
the request's Basic credentials are sent. The credentials go to the realm
only when it is the registry's own host or HTTPS, never in clear text to a
third party. Tokens live in memory only.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlencode, urlsplit

import attrs

from proxy.errors import TargetDenied, UpstreamError
from proxy.fetch.base import Job
from proxy.fetch.transfer import HttpClient, header, upstream_error
from proxy.request import Credentials

log = logging.getLogger(__name__)

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@attrs.frozen
class Challenge:
    scheme: str
    params: dict[str, str] = attrs.field(eq=False)


def parse_challenge(value: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value (``Bearer realm="...",service="..."``)."""
    value = value.strip()
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if m is None or m.end() == pos:
            break
        params[m.group(1).lower()] = (
            m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3)
        )
        pos = m.end()
    return Challenge(scheme.lower(), params)


class RegistryAuth:
    """The Authorization header for one registry and repository."""

    def __init__(
        self,
        client: HttpClient,
        registry_host: str,
        repository: str,
        credentials: Credentials | None,
    ) -> None:
        self._client = client
        self._host = registry_host.lower()
        self._repository = repository
        self._credentials = credentials
        # Until a challenge says otherwise, credentials are sent as given.
        self.authorization: bytes | None = credentials.authorization() if credentials else None
        self._tried: set[str] = set()

    def reset(self) -> None:
        """Forget tokens (they expired): the next 401 fetches new ones."""
        creds = self._credentials
        self.authorization = creds.authorization() if creds else None
        self._tried.clear()

    async def challenged(self, response: object, job: Job) -> bool:
        """Handle a 401; return True if a retry with the new header makes sense."""
        values = getattr(response, "headers").getRawHeaders(b"WWW-Authenticate") or []  # noqa: B009
        challenges = [c for c in (parse_challenge(v.decode("latin-1")) for v in values) if c]
        for ch in challenges:
            if ch.scheme == "bearer" and "realm" in ch.params:
                key = "bearer:" + ch.params.get("scope", "")
                if key in self._tried:
                    return False
                self._tried.add(key)
                self.authorization = b"Bearer " + (await self._token(ch, job)).encode()
                return True
            if ch.scheme == "basic":
                creds = self._credentials
                if creds is None or creds.kind != "Basic" or "basic" in self._tried:
                    return False
                self._tried.add("basic")
                self.authorization = creds.authorization()
                return True
        return False

    def _may_send_credentials(self, realm: str) -> bool:
        parts = urlsplit(realm)
        return parts.scheme == "https" or (parts.hostname or "").lower() == self._host

    async def _token(self, ch: Challenge, job: Job) -> str:
        realm = ch.params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"registry sent an unusable token realm {realm[:100]!r}")
        query: list[tuple[str, str]] = []
        if "service" in ch.params:
            query.append(("service", ch.params["service"]))
        scope = ch.params.get("scope") or f"repository:{self._repository}:pull"
        query.append(("scope", scope))
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        authorization = None
        if self._credentials is not None:
            if not self._may_send_credentials(realm):
                raise TargetDenied(
                    f"the registry's token realm {parts.netloc} is another host over plain "
                    "HTTP; credentials are not sent there"
                )
            authorization = self._credentials.authorization()
        response = await self._client.get(url, job, authorization=authorization)
        body = await self._client.read_small(response, 1024 * 1024)
        if response.code != 200:
            error = upstream_error(url, response, body)
            raise UpstreamError(
                f"token request to {parts.netloc} failed: {error.message}", response.code
            )
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            ctype = header(response, b"Content-Type")
            raise UpstreamError(f"token realm {parts.netloc} sent no token ({ctype})")
        log.debug("got a registry token for %s from %s", scope, parts.netloc)
        return token
