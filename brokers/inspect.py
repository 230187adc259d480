"""Reading a queue's state from outside the consumer: partition statistics, dead letters,
messages in flight; and the operator's actions on dead letters (requeue, discard)."""

from __future__ import annotations

import time
from typing import Any, cast

from dramatiq.message import Message

from brokers.errors import DeadLetterNotFound, redis_unreachable_as_connection_closed
from brokers.keys import where_field
from brokers.records import DeadLetterBacklog, DeadLetterEntry, PartitionStats, text
from brokers.scripts import raise_first
from brokers.store import StreamStore

#: One dead letter to requeue from what the application stored: (partition, dead-letter
#: entry id, the message, its seq).
DeadLetterRequeue = tuple[int, str, Message[Any], int | None]

#: Reads per partition of a full (not ``cheap``) snapshot.
READS_PER_PARTITION = 7


class Inspector:
    """Snapshots and dead-letter handling for the queues of one broker."""

    def __init__(self, store: StreamStore, partitions: int) -> None:
        self.store = store
        self.partitions = partitions

    def partition_stats(self, queue_name: str, *, cheap: bool = False) -> list[PartitionStats]:
        """Pending, undelivered, length, oldest age, delayed and dead letters per partition,
        and who holds each lease, in one round trip. With ``cheap``, only lengths."""
        with redis_unreachable_as_connection_closed():
            pipe = self.store.client.pipeline(transaction=False)
            self._read_partitions(pipe, queue_name, cheap=cheap)
            replies = pipe.execute(raise_on_error=False)
        return self._partition_stats(queue_name, replies, cheap=cheap)

    def overview(self, queue_names: list[str]) -> tuple[dict[str, list[PartitionStats]], list[str]]:
        """:meth:`partition_stats` of several queues and the live members (:meth:`members`),
        all in one round trip: what a status page shows."""
        with redis_unreachable_as_connection_closed():
            pipe = self.store.client.pipeline(transaction=False)
            for queue_name in queue_names:
                self._read_partitions(pipe, queue_name, cheap=False)
            pipe.zrangebyscore(self.store.members_key, int(time.time() * 1000), "+inf")
            *replies, alive = pipe.execute(raise_on_error=False)
        if isinstance(alive, Exception):
            raise alive
        size = self.partitions * READS_PER_PARTITION
        stats = {
            name: self._partition_stats(name, replies[i * size : (i + 1) * size], cheap=False)
            for i, name in enumerate(queue_names)
        }
        return stats, sorted(text(m) for m in cast(list[Any], alive))

    def _read_partitions(self, pipe: Any, queue_name: str, *, cheap: bool) -> None:
        """Queue the reads :meth:`_partition_stats` parses (2 a partition if ``cheap``,
        else :data:`READS_PER_PARTITION`)."""
        for partition in range(self.partitions):
            keys = self.store.keys(queue_name, partition)
            pipe.xlen(keys.stream)
            pipe.zcard(keys.delayed)
            if not cheap:
                pipe.xlen(keys.dead)
                pipe.xinfo_groups(keys.stream)
                pipe.xrange(keys.stream, count=1)
                pipe.get(keys.lease)
                pipe.hkeys(keys.state)

    def _partition_stats(self, queue_name: str, replies: list[Any], *, cheap: bool) -> list[PartitionStats]:
        per_partition = 2 if cheap else READS_PER_PARTITION
        now_ms = int(time.time() * 1000)
        stats = []
        for partition in range(self.partitions):
            length, delayed, *rest = replies[partition * per_partition : (partition + 1) * per_partition]
            for reply in (length, delayed):
                if isinstance(reply, Exception):
                    raise reply
            pending = undelivered = oldest = dead = retrying = 0
            owner = ""
            if not cheap:
                dead_letters, groups, first, lease, state_fields = rest
                if not isinstance(state_fields, Exception):
                    retrying = sum(1 for f in state_fields or [] if text(f).startswith("r:"))
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
                    retrying=retrying,
                )
            )
        return stats

    def members(self) -> list[str]:
        """The live consumer processes (their consumer names), sorted."""
        with redis_unreachable_as_connection_closed():
            alive = self.store.client.zrangebyscore(self.store.members_key, int(time.time() * 1000), "+inf")
        return sorted(text(m) for m in cast(list[Any], alive))

    def dead_letters(
        self, queue_name: str, *, partition: int | None = None, after: str | None = None, count: int = 1000
    ) -> list[DeadLetterEntry]:
        """Dead letters of ``queue_name``, oldest first: at most ``count`` per partition,
        each partition's page starting after the entry id ``after`` (a cursor)."""
        partitions = range(self.partitions) if partition is None else [partition]
        start = "-" if after is None else f"({after}"
        found = []
        for p in partitions:
            with redis_unreachable_as_connection_closed():
                reply = cast(
                    list[tuple[Any, dict[Any, Any]]],
                    self.store.client.xrange(self.store.keys(queue_name, p).dead, min=start, count=count),
                )
            found += [_dead_letter(queue_name, p, raw_id, raw_fields) for raw_id, raw_fields in reply]
        return found

    def trim_dead_letters(self, queue_name: str, partition: int, up_to: str) -> int:
        """Delete the dead-letter entries of a partition up to entry id ``up_to`` (once an
        application has them elsewhere); returns how many were deleted."""
        ms, _, seq = up_to.partition("-")
        keep_from = f"{ms}-{int(seq or 0) + 1}"
        with redis_unreachable_as_connection_closed():
            # Exact, not "~": an approximate trim keeps up to a node's worth of entries that
            # the application already has, and a reader would see them again.
            return int(
                self.store.client.xtrim(
                    self.store.keys(queue_name, partition).dead, minid=keep_from, approximate=False
                )
            )

    def dead_letter_backlog(self, queue_name: str) -> list[DeadLetterBacklog]:
        """Per partition, the entries in the dead-letter stream and the age of the oldest,
        in one round trip (once an application trims what it stored, what it has still to
        read)."""
        with redis_unreachable_as_connection_closed():
            pipe = self.store.client.pipeline(transaction=False)
            for partition in range(self.partitions):
                dead = self.store.keys(queue_name, partition).dead
                pipe.xlen(dead)
                pipe.xrange(dead, count=1)
            replies = pipe.execute()
        now_ms = int(time.time() * 1000)
        backlog = []
        for partition in range(self.partitions):
            length, first = replies[2 * partition], replies[2 * partition + 1]
            oldest_ms = int(text(first[0][0]).split("-")[0]) if first else now_ms
            backlog.append(DeadLetterBacklog(queue_name, partition, int(length), max(0, now_ms - oldest_ms)))
        return backlog

    def requeue_dead_letter(
        self,
        queue_name: str,
        partition: int,
        dead_letter_id: str,
        *,
        message: Message[Any] | None = None,
        seq: int | None = None,
    ) -> str:
        """Put a dead-lettered message back on its partition (same message id, options and
        ``seq``): from its dead-letter entry, or from ``message`` and ``seq`` when the entry
        is gone (trimmed). For a message enqueued with ``locate``, a second call adds nothing.

        Raises:
          DeadLetterNotFound: no such dead letter and no ``message`` given.
        """
        keys = self.store.keys(queue_name, partition)
        located = (
            where_field(message.message_id) if message is not None and message.options.get("locate") else b""
        )
        with redis_unreachable_as_connection_closed():
            if message is None:
                message = self._dead_message(keys.dead, dead_letter_id)
                if message is not None and message.options.get("locate"):
                    located = where_field(message.message_id)
                message = None  # the script takes it from the dead letter itself
            new_id = self.store.script("requeue")(
                keys=[keys.stream, keys.dead, keys.where],
                args=[
                    dead_letter_id,
                    message.encode() if message is not None else "",
                    "" if seq is None else seq,
                    located,
                ],
            )
        if not new_id:
            raise DeadLetterNotFound(f"{queue_name}/{partition}/{dead_letter_id}")
        return text(new_id)

    def requeue_dead_letters(self, queue_name: str, dead_letters: list[DeadLetterRequeue]) -> list[str]:
        """:meth:`requeue_dead_letter` for many dead letters whose message the caller
        has, in one round trip (one per node on a cluster); the new stream ids, in order.
        Safe to repeat as one call is."""
        script = self.store.script("requeue")
        calls = []
        for partition, dead_letter_id, message, seq in dead_letters:
            keys = self.store.keys(queue_name, partition)
            located = where_field(message.message_id) if message.options.get("locate") else b""
            args = [dead_letter_id, message.encode(), "" if seq is None else seq, located]
            calls.append((script, [keys.stream, keys.dead, keys.where], args))
        with redis_unreachable_as_connection_closed():
            replies = self.store.runner.run(calls)
        raise_first(replies)
        return [text(r) for r in replies]

    def discard_dead_letter(
        self, queue_name: str, partition: int, dead_letter_id: str, *, message: Message[Any] | None = None
    ) -> bool:
        """Delete a dead letter for good, with what its message kept in Redis (idempotency
        record, place in the "where" hash); False when the entry was already gone."""
        keys = self.store.keys(queue_name, partition)
        with redis_unreachable_as_connection_closed():
            if message is None:
                message = self._dead_message(keys.dead, dead_letter_id)
            pipe = self.store.client.pipeline(transaction=True)
            pipe.xdel(keys.dead, dead_letter_id)
            if message is not None:
                if message.options.get("idempotency_key"):
                    pipe.delete(keys.idempotency(str(message.options["idempotency_key"])))
                if message.options.get("locate"):
                    pipe.hdel(keys.where, where_field(message.message_id))
            return bool(pipe.execute()[0])

    def _dead_message(self, dead_stream: str, dead_letter_id: str) -> Message[Any] | None:
        found = cast(list[Any], self.store.client.xrange(dead_stream, min=dead_letter_id, max=dead_letter_id))
        if not found:
            return None
        return _dead_letter("", 0, found[0][0], found[0][1]).message

    def locate(self, queue_name: str, partition: int, message_id: str) -> Message[Any] | None:
        """A message enqueued with ``locate``, with ``options["seq"]``, while it is pending
        (read from its stream entry) or dead-lettered (from its dead-letter entry, until
        trimmed); None otherwise (persisted and acked, or delayed)."""
        keys = self.store.keys(queue_name, partition)
        with redis_unreachable_as_connection_closed():
            where = self.store.client.hget(keys.where, where_field(message_id))
            if where is None:
                return None
            # "<entry id> <seq>", or "d <dead-letter id> <seq>" (seq may be empty)
            parts = text(where).split(" ")
            stream = keys.stream
            if parts[0] == "d":
                stream, parts = keys.dead, parts[1:]
            entry_id, seq = parts[0], parts[1] if len(parts) > 1 else ""
            if entry_id == "-":  # delayed: not in a stream yet
                return None
            found = cast(list[Any], self.store.client.xrange(stream, min=entry_id, max=entry_id))
        if not found:
            return None
        fields = {text(k): v for k, v in found[0][1].items()}
        message = Message.decode(bytes(fields["m"]))
        if seq:
            message.options["seq"] = int(seq)
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
