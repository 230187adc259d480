"""Enqueueing: messages of one partition go in one atomic script call (``lua/enqueue.lua``),
several partitions in one round trip.

What the script remembers is small: for a repeat, an idempotency record of the message's
id, seq, timestamp, ``fingerprint`` and ``correlation_id`` options (not the message); for
a lookup (option ``locate``), where the message is (a field of the partition's "where"
hash: its entry id and seq), not a copy of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq import get_encoder
from dramatiq.message import Message

from brokers import metrics
from brokers.keys import partition_for, uuid_hex, where_field
from brokers.records import text
from brokers.store import StreamStore

#: Values per message in the enqueue script's arguments (see ``lua/enqueue.lua``).
_ARGS_PER_MESSAGE = 7


@dataclass(frozen=True, slots=True)
class EnqueueSettings:
    """How enqueueing numbers, deduplicates and places messages."""

    partitions: int
    #: Default lifetime of an idempotency record, in milliseconds (0: until done).
    idempotency_ttl_ms: int
    #: Called with a sequence key whose counter is missing; returns the last number used.
    sequence_floor: Callable[[str], int] | None


class Enqueuer:
    """Builds the enqueue script's calls and reads its answers."""

    def __init__(self, store: StreamStore, settings: EnqueueSettings) -> None:
        self.store = store
        self.settings = settings

    def partition_of(self, message: Message[Any]) -> int:
        """The partition ``message`` goes to."""
        key = message.options.get("partition_key")
        return partition_for(str(key if key is not None else message.message_id), self.settings.partitions)

    def enqueue(self, messages: Sequence[Message[Any]], delay: int | None = None) -> list[Message[Any]]:
        """Enqueue ``messages`` (one script call per partition, one round trip); return,
        in order, each message as sent or, for a repeat, the original one."""
        by_partition: dict[int, list[int]] = {}
        for i, message in enumerate(messages):
            by_partition.setdefault(self.partition_of(message), []).append(i)
        floors: dict[str, str] = {}
        results: dict[int, Any] = {}
        pending = list(by_partition)
        while pending:
            calls = [self._call(p, [messages[i] for i in by_partition[p]], delay, floors) for p in pending]
            replies = self.store.enqueue(calls)
            missing = []
            for partition, reply in zip(pending, replies, strict=True):
                if reply and not isinstance(reply[0], list):  # {2, counter, ...}: floors needed
                    missing.append(partition)
                    for counter in reply[1:]:
                        floors[text(counter)] = ""
                else:
                    results[partition] = reply
            self._fill_floors(floors, messages)
            pending = missing
        out: list[Message[Any]] = list(messages)
        for partition, indexes in by_partition.items():
            for i, reply in zip(indexes, results[partition], strict=True):
                out[i] = self._answer(messages[i], partition, reply)
        return out

    def _call(
        self, partition: int, messages: list[Message[Any]], delay: int | None, floors: dict[str, str]
    ) -> tuple[list[str], list[Any]]:
        keys = self.store.keys(messages[0].queue_name, partition)
        script_keys = [keys.stream, keys.delayed, keys.where]
        args: list[Any] = [len(messages)]
        for message in messages:
            options = message.options
            idempotency_key = options.get("idempotency_key")
            sequence_key = options.get("sequence_key")
            counter = keys.sequence(str(sequence_key)) if sequence_key else keys.stream
            script_keys += [
                keys.idempotency(str(idempotency_key)) if idempotency_key else keys.stream,
                counter,
            ]
            remember = ""
            if idempotency_key:
                ttl = options.get("idempotency_ttl_ms")
                remember = str(int(self.settings.idempotency_ttl_ms if ttl is None else ttl))
            compact_id, implied_time = _compact_id(message.message_id, message.message_timestamp)
            tail = "|".join(
                [
                    compact_id,
                    "" if implied_time else str(message.message_timestamp),
                    str(options.get("fingerprint") or ""),
                    str(options.get("correlation_id") or ""),
                ]
            )
            args += [
                _encode(message),
                remember,
                tail,
                "1" if sequence_key else "0",
                floors.get(counter, ""),
                int(delay or 0),
                where_field(message.message_id) if options.get("locate") else "",
            ]
        args.append("1" if self.settings.sequence_floor else "0")
        return script_keys, args

    def _fill_floors(self, floors: dict[str, str], messages: Sequence[Message[Any]]) -> None:
        """Ask the application for the floor of every counter the script found missing."""
        if not any(value == "" for value in floors.values()):
            return
        assert self.settings.sequence_floor is not None
        for message in messages:
            sequence_key = message.options.get("sequence_key")
            if not sequence_key:
                continue
            counter = self.store.keys(message.queue_name, self.partition_of(message)).sequence(
                str(sequence_key)
            )
            if floors.get(counter) == "":
                floors[counter] = str(int(self.settings.sequence_floor(str(sequence_key))))

    @staticmethod
    def _answer(message: Message[Any], partition: int, reply: Sequence[Any]) -> Message[Any]:
        if int(reply[0]) == 1:
            seq, compact_id, timestamp, fingerprint, correlation_id = text(reply[1]).split("|", 4)
            message_id, implied = _expand_id(compact_id)
            metrics.STREAM_IDEMPOTENT_HIT.labels(str(partition)).inc()
            options: dict[str, Any] = {"idempotent_hit": True, "partition": partition}
            if seq:
                options["seq"] = int(seq)
            if fingerprint:
                options["fingerprint"] = fingerprint
            if correlation_id:
                options["correlation_id"] = correlation_id
            return Message(
                queue_name=message.queue_name,
                actor_name=message.actor_name,
                args=(),
                kwargs={},
                options=options,
                message_id=message_id,
                message_timestamp=int(timestamp) if timestamp else implied,
            )
        # The message is the caller's: its options get the partition, id and seq in place.
        options = message.options
        options["partition"] = partition
        if reply[1]:
            options["stream_id"] = text(reply[1])
        if reply[2]:
            options["seq"] = int(reply[2])
        metrics.enqueued(partition, str(options.get("priority", "normal")))
        return message


def _compact_id(message_id: str, timestamp: int) -> tuple[str, bool]:
    """A message id as the idempotency record keeps it (one is kept per pending message:
    every byte counts): a canonical UUID as its 32 hex digits after "u", or after "v" for a
    UUIDv7 whose time is the message's timestamp (then the record leaves the timestamp
    out: True); any other id as is."""
    digits = uuid_hex(message_id)
    if digits is None:
        return message_id, False
    if digits[12] == "7" and int(digits[:12], 16) == timestamp:
        return f"v{digits}", True
    return f"u{digits}", False


def _expand_id(compact: str) -> tuple[str, int]:
    """The message id and, for a "v" id, the timestamp it implies (else 0)."""
    if len(compact) == 33 and compact[0] in "uv":
        value = uuid.UUID(hex=compact[1:])
        return str(value), int.from_bytes(value.bytes[:6]) if compact[0] == "v" else 0
    return compact, 0


def _encode(message: Message[Any]) -> bytes:
    """``message.encode()``, without its per-call look-up of the dataclass's fields."""
    return get_encoder().encode(
        {
            "queue_name": message.queue_name,
            "actor_name": message.actor_name,
            "args": message.args,
            "kwargs": message.kwargs,
            "options": message.options,
            "message_id": message.message_id,
            "message_timestamp": message.message_timestamp,
        }
    )
