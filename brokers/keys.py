"""Key names in Redis and the partition function.

Every key of one partition carries the same Redis Cluster hash tag, ``{namespace:N}``,
so each partition's atomic steps (one Lua script) touch a single slot, while different
partitions spread over the cluster's shards.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import mmh3


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key``: ``murmur3_32(key, seed=0, unsigned) % partitions``."""
    return mmh3.hash(key, signed=False) % partitions


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The names of the keys that one queue uses in one partition."""

    stream: str
    state: str
    delayed: str
    dead: str
    lease: str
    #: Hash: message id → where the message is, for messages enqueued with ``locate``.
    where: str
    tag: str

    def idempotency(self, key: str) -> str:
        """The record of the first message sent with idempotency ``key`` (named by 128 bits
        of the key's digest, so a long client key costs no more than a short one)."""
        digest = base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()[:16]).rstrip(b"=")
        return f"{self.tag}:idem:{digest.decode()}"

    def sequence(self, key: str) -> str:
        """The counter that numbers the messages of sequence ``key``."""
        return f"{self.tag}:seq:{key}"


def partition_keys(namespace: str, queue_name: str, partition: int) -> PartitionKeys:
    """Key names of ``queue_name``'s partition ``partition``."""
    tag = f"{{{namespace}:{partition}}}"
    base = f"{tag}:q:{queue_name}"
    return PartitionKeys(
        stream=base,
        state=f"{base}:state",
        delayed=f"{base}:delayed",
        dead=f"{base}:dead",
        lease=f"{base}:lease",
        where=f"{base}:where",
        tag=tag,
    )


def members_key(namespace: str) -> str:
    """The sorted set of live consumer processes (score: expiry time in ms)."""
    return f"{namespace}:members"


#: A UUID as ``str(uuid.UUID(...))`` writes it (what Dramatiq and our ingress produce).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_hex(message_id: str) -> str | None:
    """The 32 hex digits of a canonical UUID string, else None (cheaper than parsing a
    ``uuid.UUID``: this runs for every message enqueued and acked)."""
    if len(message_id) == 36 and _CANONICAL_UUID.fullmatch(message_id):
        return message_id.replace("-", "")
    return None


def where_field(message_id: str) -> bytes:
    """A message's field in a partition's "where" hash: the 16 bytes of a UUID (most ids
    are), else the id itself."""
    digits = uuid_hex(message_id)
    return bytes.fromhex(digits) if digits is not None else message_id.encode()
