"""Idempotency of ingress in one value object: which key a message is deduplicated on,
for how long, and how a repeat is told from a different message under the same key.

SPEC §3: a client key (``Idempotency-Key`` header or ``client_message_id``) is scoped per
(sender, conversation), as Matrix scopes a transaction id per access token and room; it is
printable ASCII, 1 to 200 characters. Without one, the message's content is its key, for
a window measured from the first send (``IDEMPOTENCY_WINDOW_MS``).

Pure Python (no Django, no Redis), so it is unit-tested on its own (``tests/unit/``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from delivery.errors import IdempotencyKeyReused, InvalidInput

#: Longest client idempotency key, in characters.
CLIENT_KEY_MAX_LENGTH = 200

#: The request header that carries a client key (the same key as ``client_message_id``).
HEADER = "Idempotency-Key"

#: The body field that carries a client key.
BODY_FIELD = "client_message_id"

#: Hex digits of :func:`digest` (128 bits: collisions are not a concern at any volume).
DIGEST_HEX_LENGTH = 32

#: A client key: printable ASCII (0x20-0x7E). Anything else, including a raw UTF-8 header
#: (which Django decodes as latin-1), is refused rather than guessed at.
_CLIENT_KEY = re.compile(rf"[\x20-\x7e]{{1,{CLIENT_KEY_MAX_LENGTH}}}")

#: A record's lifetime "until the message is done" (the broker's ``idempotency_ttl_ms`` 0).
UNTIL_PERSISTED = 0

#: Key prefixes: ``c`` a client key, ``d`` a digest of the content.
_CLIENT, _CONTENT = "c", "d"


def digest(*parts: str | bytes) -> str:
    """The one hash of idempotency: SHA-256 over the parts, each prefixed with its
    length (so no two different lists of parts hash alike), in hex."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(b"%d:" % len(data))
        hasher.update(data)
    return hasher.hexdigest()[:DIGEST_HEX_LENGTH]


#: Hex digits of a fingerprint (64 bits: a key reused for another body and taken for a
#: repeat by chance is a 1 in 2**64 event; Redis keeps one per pending message).
FINGERPRINT_HEX_LENGTH = 16


def fingerprint(*, content: str | bytes, priority: str) -> str:
    """What a repeat under the same client key must match: the body that counts."""
    return digest(priority, content)[:FINGERPRINT_HEX_LENGTH]


def client_key_problem(value: str) -> str | None:
    """Why ``value`` is not a usable client key, or None when it is."""
    if _CLIENT_KEY.fullmatch(value):
        return None
    if not value or len(value) > CLIENT_KEY_MAX_LENGTH:
        return f"must be 1 to {CLIENT_KEY_MAX_LENGTH} characters"
    return "must be printable ASCII (characters 0x20 to 0x7E)"


def client_key_from(*, header: str | None, body: str | None) -> str | None:
    """The request's client key, from the header, the body or both (then equal).

    ``body`` was validated with the body (:func:`client_key_problem`); the header is
    checked here.

    Raises:
      InvalidInput: the header is not a usable key, or the two keys differ.
    """
    if header is None:
        return body
    problem = client_key_problem(header)
    if problem is not None:
        raise InvalidInput(HEADER, problem)
    if body is not None and body != header:
        raise InvalidInput(BODY_FIELD, f"differs from the {HEADER} header; send one key")
    return header


@dataclass(frozen=True, slots=True)
class IngressKey:
    """The key one POSTed message is deduplicated on.

    ``redis_key`` is the broker's ``idempotency_key`` option: the enqueue script answers a
    repeat from its record for ``ttl_ms`` (0: until the message is persisted, then for the
    broker's grace period, or while it is dead-lettered). ``persisted_key`` is what the message's row
    holds once persisted, where ingress finds a repeat whose record is gone (client keys
    only: a content key's row is unique per message). ``fingerprint`` is what a repeat
    must match to be a repeat and not a reuse of the key (empty for a content key: the
    content is the key).
    """

    redis_key: str
    ttl_ms: int
    fingerprint: str
    persisted_key: str | None

    @classmethod
    def for_client(
        cls,
        *,
        sender_id: int,
        conversation_id: str,
        client_key: str,
        content: str | bytes,
        priority: str,
    ) -> IngressKey:
        """A client's key, scoped per (sender, conversation): Redis answers a repeat while
        the message is pending, the database once it is persisted."""
        key = f"{_CLIENT}:{sender_id}:{conversation_id}:{client_key}"
        return cls(
            redis_key=key,
            ttl_ms=UNTIL_PERSISTED,
            fingerprint=fingerprint(content=content, priority=priority),
            persisted_key=key,
        )

    @classmethod
    def for_content(
        cls, *, sender_id: int, conversation_id: str, content: str | bytes, window_ms: int
    ) -> IngressKey:
        """A key derived from (sender, conversation, content) for a message sent without
        one: repeats are one message for ``window_ms`` from the first send."""
        key = f"{_CONTENT}:{sender_id}:{conversation_id}:{digest(content)}"
        return cls(redis_key=key, ttl_ms=window_ms, fingerprint="", persisted_key=None)

    def database_key(self, message_id: str) -> str:
        """The ``idempotency_key`` of the message's row (unique in the table)."""
        return self.persisted_key or f"{self.redis_key}:{message_id}"

    def check_repeat(self, original_fingerprint: str) -> None:
        """Accept the message found under this key as a repeat of this one.

        Raises:
          IdempotencyKeyReused: the key was used before for a different message.
        """
        if self.fingerprint and original_fingerprint != self.fingerprint:
            raise IdempotencyKeyReused("this idempotency key was used for a different message")
