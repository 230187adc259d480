"""Values the broker's layers pass to each other: entries, snapshots, dead letters.

No Redis and no behaviour here beyond decoding, so every layer may import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.message import Message

#: Most characters of an error message kept with a dead letter.
ERROR_LIMIT_CHARS = 2000

#: Why an entry was dead-lettered (the ``reason`` of a dead letter and of the metrics).
REASON_MAX_RETRIES = "max_retries"
REASON_THROWS = "non_retryable"
REASON_UNKNOWN_ACTOR = "unknown_actor"
REASON_DECODE_ERROR = "decode_error"
REASON_FAILED = "failed"
#: Delivered ``max_deliveries`` times without ever finishing: its process died each time.
REASON_CRASHED_WORKER = "crashed_worker"


def text(value: Any) -> str:
    """A Redis reply value as ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def stream_order(stream_id: str) -> tuple[int, int]:
    """A stream id (``"ms-seq"``) as a tuple that sorts as Redis orders entries."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True, eq=False)
class StreamEntry:
    """One entry of a partition stream, as this process received it."""

    stream_id: str
    data: bytes
    seq: int | None
    #: The ordering key (``partition_key`` option; the message id when none was given).
    key: str
    #: ``stream_id`` as a sortable tuple.
    order: tuple[int, int] = (0, 0)
    message: Message[Any] | None = None
    decode_error: str = ""
    #: Failures counted so far (durable, ``a:<id>`` in the partition's state hash).
    attempts: int = 0
    #: Runs started after a redelivery and never finished (durable, ``s:<id>``).
    starts: int = 0
    #: Times Redis delivered the entry to a consumer, this delivery included.
    deliveries: int = 1
    #: Milliseconds its backoff still had to run when this process claimed it.
    retry_in_ms: int = 0
    #: Redelivered after a consumer died while holding it: it may be what killed it, so
    #: each run is recorded durably before it starts (see ``PartitionState``).
    suspect: bool = False
    #: Part of a batch that failed: it runs alone until it succeeds once.
    isolated: bool = False

    @property
    def batchable(self) -> bool:
        """Whether it may share a batch with other entries."""
        return self.message is not None and not self.isolated and not self.suspect


def decode_entry(stream_id: Any, fields: Mapping[Any, Any] | Sequence[Any]) -> StreamEntry:
    """An entry from a stream reply (``fields`` as a mapping or a flat list)."""
    data: Any = b""
    seq_raw: Any = b""
    pairs = fields.items() if isinstance(fields, Mapping) else zip(fields[::2], fields[1::2], strict=True)
    for name, value in pairs:
        if name == b"m" or name == "m":
            data = value
        elif name == b"seq" or name == "seq":
            seq_raw = value
    entry_id = text(stream_id)
    entry = StreamEntry(
        stream_id=entry_id,
        data=data if isinstance(data, bytes) else str(data).encode(),
        seq=int(seq_raw) if seq_raw else None,
        key="",
        order=stream_order(entry_id),
    )
    try:
        message = entry.message = Message.decode(entry.data)
    except Exception as error:
        entry.decode_error = f"{type(error).__name__}: {error}"[:ERROR_LIMIT_CHARS]
        # Undecodable: its own key (no order owed to anything else).
        entry.key = entry_id
        return entry
    # No ordering key: the message is its own key (no order owed to anything else).
    key = message.options.get("partition_key")
    entry.key = message.message_id if key is None else str(key)
    return entry


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """A snapshot of one queue's partition, for metrics and the admin."""

    queue_name: str
    partition: int
    #: Entries delivered to a consumer and not yet acked.
    pending: int
    #: Entries never delivered to the group (``XINFO GROUPS`` lag).
    undelivered: int
    #: Entries in the stream (acked ones are deleted, so this is the work left).
    length: int
    #: Age of the oldest entry still in the stream, in milliseconds (0 when empty).
    oldest_age_ms: int
    delayed: int
    dead_letters: int
    #: The consumer holding the partition's lease ("" when nobody does).
    owner: str = ""
    #: Entries waiting for a retry in place (about the number of keys blocked behind one).
    retrying: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetterBacklog:
    """What one partition's dead-letter stream holds."""

    queue_name: str
    partition: int
    #: Entries in the dead-letter stream.
    length: int
    #: Age of the oldest of them, in milliseconds (0 when the stream is empty).
    oldest_age_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of a partition's dead-letter stream."""

    queue_name: str
    partition: int
    dead_letter_id: str
    stream_id: str
    message: Message[Any] | None
    raw_message: bytes
    seq: int | None
    reason: str
    error: str
    traceback: str
    attempts: int
    dead_lettered_at_ms: int
