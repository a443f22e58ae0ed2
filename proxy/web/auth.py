"""Who may change the cache: the optional API token.

With ``--api-token`` set, requests that change the cache (``POST`` and
``DELETE`` on ``/content``) must carry the token, as ``Authorization: Bearer
<token>`` or as the password of ``Authorization: Basic`` (any user name), the
way registry clients send credentials after a ``WWW-Authenticate: Basic``
challenge. Reads stay open, as the original server's were, unless
``--protect-reads`` is set: then every ``/content`` and ``/v2`` request
needs the token too (``/healthz`` and ``/readyz`` stay open for probes). Comparisons take
constant time; the token is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

REALM = b'Basic realm="storage-manager"'


def authorized(request: Any, token: str | None) -> bool:
    """Whether ``request`` may change the cache."""
    if token is None:
        return True
    value = request.getHeader(b"authorization")
    if not value:
        return False
    scheme, _, credential = value.decode("latin-1").partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer":
        offered = credential
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        offered = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(offered.encode(), token.encode())
