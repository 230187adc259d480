"""Reading a queue's state from outside the consumer: partition statistics, dead letters,
messages in flight; and the operator's actions on dead letters (requeue, discard)."""

from __future__ import annotations

import time
from typing import Any, cast

from dramatiq.message import Message

from brokers.errors import DeadLetterNotFound, redis_unreachable_as_connection_closed
from brokers.records import DeadLetterEntry, PartitionStats, text
from brokers.store import StreamStore


class Inspector:
    """Snapshots and dead-letter handling for the queues of one broker."""

    def __init__(self, store: StreamStore, partitions: int) -> None:
        self.store = store
        self.partitions = partitions

    def partition_stats(self, queue_name: str, *, cheap: bool = False) -> list[PartitionStats]:
        """Pending, undelivered, length, oldest age, delayed and dead letters per partition,
        and who holds each lease, in one round trip. With ``cheap``, only lengths."""
        per_partition = 2 if cheap else 6
        with redis_unreachable_as_connection_closed():
            pipe = self.store.client.pipeline(transaction=False)
            for partition in range(self.partitions):
                keys = self.store.keys(queue_name, partition)
                pipe.xlen(keys.stream)
                pipe.zcard(keys.delayed)
                if not cheap:
                    pipe.xlen(keys.dead)
                    pipe.xinfo_groups(keys.stream)
                    pipe.xrange(keys.stream, count=1)
                    pipe.get(keys.lease)
            replies = pipe.execute(raise_on_error=False)
        now_ms = int(time.time() * 1000)
        stats = []
        for partition in range(self.partitions):
            length, delayed, *rest = replies[partition * per_partition : (partition + 1) * per_partition]
            for reply in (length, delayed):
                if isinstance(reply, Exception):
                    raise reply
            pending = undelivered = oldest = dead = 0
            owner = ""
            if not cheap:
                dead_letters, groups, first, lease = rest
                dead = 0 if isinstance(dead_letters, Exception) else int(dead_letters)
                # Without the group (no consumer ever started) every entry is undelivered.
                undelivered = int(length)
                for group in [] if isinstance(groups, Exception) else groups or []:
                    info = {text(k): v for k, v in group.items()}
                    if text(info.get("name")) == queue_name:
                        pending = int(info.get("pending") or 0)
                        lag = info.get("lag")
                        # lag is null after deletions inside the undelivered range: then
                        # everything in the stream that is not pending is undelivered.
                        undelivered = int(lag) if lag is not None else max(0, int(length) - pending)
                if first and not isinstance(first, Exception):
                    oldest = max(0, now_ms - int(text(first[0][0]).split("-")[0]))
                if lease and not isinstance(lease, Exception):
                    owner = text(lease)
            stats.append(
                PartitionStats(
                    queue_name=queue_name,
                    partition=partition,
                    pending=pending,
                    undelivered=undelivered,
                    length=int(length),
                    oldest_age_ms=oldest,
                    delayed=int(delayed),
                    dead_letters=dead,
                    owner=owner,
                )
            )
        return stats

    def dead_letters(
        self, queue_name: str, *, partition: int | None = None, count: int = 1000
    ) -> list[DeadLetterEntry]:
        """Dead letters of ``queue_name`` (oldest first, at most ``count`` per partition)."""
        partitions = range(self.partitions) if partition is None else [partition]
        found = []
        for p in partitions:
            with redis_unreachable_as_connection_closed():
                reply = cast(
                    list[tuple[Any, dict[Any, Any]]],
                    self.store.client.xrange(self.store.keys(queue_name, p).dead, count=count),
                )
            found += [_dead_letter(queue_name, p, raw_id, raw_fields) for raw_id, raw_fields in reply]
        return found

    def requeue_dead_letter(self, queue_name: str, partition: int, dead_letter_id: str) -> str:
        """Put a dead letter back on its partition (same message, options and ``seq``).

        Raises:
          DeadLetterNotFound: when it is not (any more) in the dead-letter stream.
        """
        keys = self.store.keys(queue_name, partition)
        with redis_unreachable_as_connection_closed():
            new_id = self.store.script("requeue_dead")(keys=[keys.stream, keys.dead], args=[dead_letter_id])
        if not new_id:
            raise DeadLetterNotFound(f"{queue_name}/{partition}/{dead_letter_id}")
        return text(new_id)

    def discard_dead_letter(self, queue_name: str, partition: int, dead_letter_id: str) -> bool:
        """Delete a dead letter; False when it was already gone."""
        with redis_unreachable_as_connection_closed():
            return bool(self.store.client.xdel(self.store.keys(queue_name, partition).dead, dead_letter_id))

    def message_view(self, view_key: str) -> Message[Any] | None:
        """The message stored under ``view_key`` at enqueue (with ``options["seq"]``), if it
        is still in flight (or dead-lettered and not expired), else None."""
        with redis_unreachable_as_connection_closed():
            encoded, seq = self.store.client.hmget(view_key, ["m", "seq"])
        if encoded is None:
            return None
        message = Message.decode(cast(bytes, encoded))
        if text(seq or b""):
            message.options["seq"] = int(text(seq))
        return message


def _dead_letter(queue_name: str, partition: int, raw_id: Any, raw_fields: dict[Any, Any]) -> DeadLetterEntry:
    fields = {text(k): v for k, v in raw_fields.items()}
    data = bytes(fields.get("m", b""))
    try:
        message: Message[Any] | None = Message.decode(data)
    except Exception:
        message = None
    seq = text(fields.get("seq", b""))
    return DeadLetterEntry(
        queue_name=queue_name,
        partition=partition,
        dead_letter_id=text(raw_id),
        stream_id=text(fields.get("stream_id", b"")),
        message=message,
        raw_message=data,
        seq=int(seq) if seq else None,
        reason=text(fields.get("reason", b"")),
        error=text(fields.get("error", b"")),
        traceback=text(fields.get("traceback", b"")),
        attempts=int(text(fields.get("attempts", b"0")) or 0),
        dead_lettered_at_ms=int(text(fields.get("time", b"0")) or 0),
    )
