"""Token authentication with a short in-process cache.

DRF's ``TokenAuthentication`` runs an ORM query (token joined to its user) on every
request, which on ingress costs as much as the enqueue itself. Tokens are looked up at
most once per ``TOKEN_CACHE_SECONDS`` per process; a deleted token or a deactivated
user is refused at the latest that long after the change.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rest_framework.authentication import TokenAuthentication

#: How long a looked-up token is trusted without asking the database again.
TOKEN_CACHE_SECONDS = 30.0

#: Most tokens kept per process (the oldest entries are dropped first).
TOKEN_CACHE_SIZE = 10_000


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, as DRF's, with lookups cached briefly."""

    _cache: dict[str, tuple[float, Any, Any]] = {}
    _lock = threading.Lock()

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)
        with self._lock:
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                for stale in list(self._cache)[: TOKEN_CACHE_SIZE // 10]:
                    self._cache.pop(stale, None)
            self._cache[key] = (now + TOKEN_CACHE_SECONDS, user, token)
        return user, token

    @classmethod
    def forget(cls, key: str | None = None) -> None:
        """Drop one cached token (or all): for tests and token revocation."""
        with cls._lock:
            if key is None:
                cls._cache.clear()
            else:
                cls._cache.pop(key, None)
