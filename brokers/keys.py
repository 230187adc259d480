"""Key names in Redis and the partition function.

Every key of one partition carries the same Redis Cluster hash tag, ``{namespace:N}``,
so each partition's atomic steps (one Lua script) touch a single slot, while different
partitions spread over the cluster's shards.
"""

from __future__ import annotations

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
    tag: str

    def idempotency(self, key: str) -> str:
        """The hash remembering the first message sent with idempotency ``key``."""
        return f"{self.tag}:idem:{key}"

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
        tag=tag,
    )


def members_key(namespace: str) -> str:
    """The sorted set of live consumer processes (score: expiry time in ms)."""
    return f"{namespace}:members"
