"""Message ids: UUIDv7 (they sort by ingress time) that also carry their partition.

A message's partition comes from its conversation, which a ``GET /api/v1/messages/{id}``
does not name; Redis keeps a pending message's pointer in its partition's slot (a Redis
Cluster runs the enqueue script on that slot only). So ingress writes the partition into
the 12 ``rand_a`` bits of the id (RFC 9562 §5.7 leaves them to the implementation), and
a lookup reads it back: one key, on one node, whatever the number of partitions. The 62
random bits of ``rand_b`` keep ids unique.
"""

from __future__ import annotations

from uuid import UUID

from uuid_utils import uuid7

#: Largest partition number an id can carry (12 bits).
MAX_PARTITION = 0xFFF


def new_message_id(partition: int) -> str:
    """A fresh UUIDv7 carrying ``partition``."""
    if not 0 <= partition <= MAX_PARTITION:
        raise ValueError(f"partition {partition} does not fit in a message id")
    digits = uuid7().hex
    # rand_a (digits 13-15, after the version digit 7) holds the partition
    digits = f"{digits[:12]}7{partition:03x}{digits[16:]}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def partition_of_message_id(message_id: str | UUID) -> int | None:
    """The partition a message id carries, or None when it is not one of ours (not v7)."""
    value = message_id if isinstance(message_id, UUID) else UUID(str(message_id))
    if value.version != 7:
        return None
    raw = value.bytes
    return ((raw[6] & 0x0F) << 8) | raw[7]


def message_id_time_ms(message_id: str) -> int:
    """The creation time a UUIDv7 carries, in Unix milliseconds."""
    return int(message_id[:8] + message_id[9:13], 16)
