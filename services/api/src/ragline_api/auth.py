"""API keys as Bearer tokens, compared in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac

from ragline_common.errors import Unauthenticated


class KeyChecker:
    def __init__(self, keys: list[str]) -> None:
        # Digests of equal length: compare_digest then takes the same time whatever key length was sent.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def identify(self, authorization: str | None) -> str:
        """Return a stable, non-secret id of the caller's key, or raise Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing API key: send the header `Authorization: Bearer <key>`")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be `Bearer <key>`")
        sent = hashlib.sha256(token.strip().encode()).digest()
        match = False
        for digest in self._digests:  # no early exit: the time taken does not tell which key matched
            match |= hmac.compare_digest(sent, digest)
        if not match:
            raise Unauthenticated("invalid API key")
        return "key:" + sent.hex()[:12]
