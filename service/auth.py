"""Optional API-key authentication.

The service holds only sha256 digests of the accepted keys (``MDP_API_KEYS``,
``MDP_API_KEYS_FILE``). A client sends its key as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; the key's digest is compared with every accepted digest in constant time
(``hmac.compare_digest``, no early exit), so the answer's timing says nothing about how much of
a key matched or which key it was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

__all__ = ["WWW_AUTHENTICATE", "ApiKeys", "presented_key"]

#: ``WWW-Authenticate`` header of a 401 answer.
WWW_AUTHENTICATE = 'Bearer realm="multidomain-service"'


class ApiKeys:
    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = [bytes.fromhex(digest) for digest in digests]
        if not self._digests:
            raise ValueError("no API key digests")

    def accepts(self, key: bytes | None) -> bool:
        if not key:
            return False
        digest = hashlib.sha256(key).digest()
        accepted = False
        for expected in self._digests:
            accepted |= hmac.compare_digest(digest, expected)
        return accepted


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key of a request's raw ASGI headers: ``X-API-Key``, else a Bearer ``Authorization``."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = credentials.strip()
    return bearer
