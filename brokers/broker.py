"""A Dramatiq broker on partitioned Redis Streams, ordered per partition.

Layout (per queue and partition ``N``, all keys sharing the hash tag ``{namespace:N}``):
a stream with one consumer group named after the queue, a state hash (durable attempt
counts, the retry-at time of the head entry, the batch limit), a sorted set of delayed
messages, a dead-letter stream and a lease. See ``docs/broker.md`` for the design.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import redis
from dramatiq.broker import Broker
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import Middleware, default_middleware
from dramatiq.middleware.retries import Retries
from redis.cluster import RedisCluster

from brokers import metrics
from brokers.coalesce import Coalescer
from brokers.consumer import (
    DEFAULT_DELAY_CHECK_MS,
    DEFAULT_FETCH_COUNT,
    DEFAULT_IDLE_POLL_MAX_MS,
    QueueState,
    StreamConsumer,
    StreamEntry,
)
from brokers.errors import UNREACHABLE, DeadLetterNotFound, redis_unreachable_as_connection_closed
from brokers.keys import PartitionKeys, members_key, partition_for, partition_keys
from brokers.leases import LeaseCoordinator
from brokers.retries import InPlaceRetries

if TYPE_CHECKING:
    from redis.commands.core import Script

#: Default number of partitions per queue.
DEFAULT_PARTITIONS = 16

#: Lease time-to-live in milliseconds; a crashed process's partitions move after this.
DEFAULT_LEASE_TTL_MS = 3000

#: Interval between lease heartbeats, in milliseconds (renewal, rebalancing, takeover).
DEFAULT_HEARTBEAT_INTERVAL_MS = 1000

#: How long an idempotency key is remembered, in milliseconds (24 h, as Stripe does).
DEFAULT_IDEMPOTENCY_TTL_MS = 86_400_000

#: Longest single blocking read of idle partitions, in milliseconds.
DEFAULT_POLL_INTERVAL_MS = 5000

#: Default lifetime of a message's view (``view_key`` option), in milliseconds.
DEFAULT_VIEW_TTL_MS = 86_400_000

#: Most characters of an error message kept with a dead letter.
ERROR_LIMIT_CHARS = 2000

_SCRIPTS = ("enqueue", "fetch", "ack", "retry", "dead_letter", "requeue_dead", "lease", "heartbeat")


class _Scripts:
    """The broker's Lua scripts, registered on one client."""

    def __init__(self, client: Any) -> None:
        folder = resources.files("brokers") / "lua"
        for name in _SCRIPTS:
            setattr(self, name, client.register_script((folder / f"{name}.lua").read_text()))

    enqueue: Script
    fetch: Script
    ack: Script
    retry: Script
    dead_letter: Script
    requeue_dead: Script
    lease: Script
    heartbeat: Script


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


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fields(flat: Sequence[Any]) -> dict[str, bytes]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _entry(raw: Sequence[Any], attempts: int) -> StreamEntry:
    fields = raw[1] if isinstance(raw[1], dict) else _fields(raw[1])
    fields = {_text(k): v for k, v in fields.items()}
    seq_raw = _text(fields.get("seq", b""))
    entry = StreamEntry(
        stream_id=_text(raw[0]),
        data=fields.get("m", b""),
        seq=int(seq_raw) if seq_raw else None,
        attempts=attempts,
    )
    try:
        entry.message = Message.decode(entry.data)
    except Exception as error:
        entry.decode_error = f"{type(error).__name__}: {error}"[:ERROR_LIMIT_CHARS]
    return entry


class RedisStreamsBroker(Broker):
    """A Dramatiq broker on Redis Streams with per-partition order and in-place retries.

    Parameters:
      url: Redis URL, used when ``client`` is not given.
      partitions: partitions per queue; a message's partition is
        ``murmur3(options["partition_key"] or message_id) % partitions``.
      namespace: prefix (and hash-tag prefix) of every key.
      client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` to use.
      middleware: as for any Dramatiq broker; a stock ``Retries`` is replaced by
        :class:`brokers.retries.InPlaceRetries` with the same settings.
      lease_ttl_ms, heartbeat_interval_ms: partition lease tuning.
      idempotency_ttl_ms: default lifetime of idempotency keys.
      poll_interval_ms: longest blocking read of idle partitions.
      fetch_count: entries fetched ahead per partition.
      idle_poll_max_ms, delay_check_ms: consumer polling tuning.
      sequence_floor: called with a sequence key whose counter is missing in Redis
        (new, or lost with Redis's data); returns the last number already used.

    Message options: ``partition_key``, ``idempotency_key`` (with optional
    ``idempotency_ttl_ms``) and ``sequence_key``; the returned message carries
    ``seq`` and, for a repeat, ``idempotent_hit``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        namespace: str = "dramatiq",
        client: redis.Redis | RedisCluster | None = None,
        middleware: list[Middleware] | None = None,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        idempotency_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS,
        poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS,
        fetch_count: int = DEFAULT_FETCH_COUNT,
        idle_poll_max_ms: int = DEFAULT_IDLE_POLL_MAX_MS,
        delay_check_ms: int = DEFAULT_DELAY_CHECK_MS,
        sequence_floor: Callable[[str], int] | None = None,
    ) -> None:
        if middleware is None:
            middleware = [m() for m in default_middleware]
        middleware = [self._in_place(m) for m in middleware]
        if not any(isinstance(m, InPlaceRetries) for m in middleware):
            middleware.append(InPlaceRetries())
        super().__init__(middleware=middleware)
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if heartbeat_interval_ms * 2 > lease_ttl_ms:
            raise ValueError("heartbeat_interval_ms must be at most half of lease_ttl_ms")
        self.logger = get_logger(__name__, type(self))
        self.partitions = partitions
        self.namespace = namespace
        self.lease_ttl_ms = lease_ttl_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.poll_interval_ms = poll_interval_ms
        self.fetch_count = fetch_count
        self.idle_poll_max_ms = idle_poll_max_ms
        self.delay_check_ms = delay_check_ms
        self.sequence_floor = sequence_floor
        self.queues: set[str] = set()
        if client is None:
            client = redis.Redis.from_url(
                url or "redis://127.0.0.1:6379/0", socket_connect_timeout=5, health_check_interval=30
            )
        self.client = client
        self.is_cluster = isinstance(client, RedisCluster)
        #: Blocking multi-stream reads need every stream on one node.
        self.can_block = not self.is_cluster
        self.scripts = _Scripts(client)
        #: Concurrent enqueues share round trips (each still waits for its own answer).
        self._enqueues = Coalescer(self._run_each)
        self.members_key = members_key(namespace)
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._states: dict[str, QueueState] = {}
        self._coordinator: LeaseCoordinator | None = None
        self._groups_ready: set[str] = set()
        self._keys: dict[tuple[str, int], PartitionKeys] = {}

    @staticmethod
    def _in_place(middleware: Middleware) -> Middleware:
        if type(middleware) is Retries:
            stock = cast(Retries, middleware)
            return InPlaceRetries(
                max_retries=stock.max_retries,
                min_backoff=stock.min_backoff,
                max_backoff=stock.max_backoff,
                retry_when=stock.retry_when,
            )
        return middleware

    # -- names ----------------------------------------------------------------------------

    def keys(self, queue_name: str, partition: int) -> PartitionKeys:
        """Key names of ``queue_name``'s ``partition``."""
        keys = self._keys.get((queue_name, partition))
        if keys is None:
            keys = self._keys[(queue_name, partition)] = partition_keys(self.namespace, queue_name, partition)
        return keys

    def partition_of(self, message: Message[Any]) -> int:
        """The partition ``message`` goes to."""
        key = message.options.get("partition_key")
        return partition_for(str(key if key is not None else message.message_id), self.partitions)

    def batch_size_of(self, actor_name: str) -> int | None:
        """How many messages ``actor_name`` takes at once; None unless it takes batches.

        An actor that declares ``batch_size`` (even 1) always receives a list of messages.
        """
        actor = self.actors.get(actor_name)
        if actor is None or "batch_size" not in actor.options:
            return None
        return max(1, int(actor.options["batch_size"]))

    def largest_batch_size(self, queue_name: str) -> int:
        """The largest ``batch_size`` of the actors on ``queue_name``."""
        sizes = [
            self.batch_size_of(a.actor_name) or 1 for a in self.actors.values() if a.queue_name == queue_name
        ]
        return max(sizes, default=1)

    # -- Dramatiq's Broker contract -------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (idempotent). Its streams and groups are created lazily."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Add ``message`` to its partition, atomically deduplicated and numbered.

        Returns the message with ``options["seq"]`` (when ``sequence_key`` was given),
        ``options["partition"]`` and ``options["stream_id"]``; for a repeat of an
        ``idempotency_key``, the *original* message with ``options["idempotent_hit"]``.

        With option ``view_key``, the same script also stores the message and its ``seq``
        under that key (for ``view_ttl_ms``, default a day), so it can be looked up by
        :meth:`message_view` while in flight; a successful ack deletes it, a dead letter
        keeps it. On a Redis Cluster the key must share the partition's hash tag.
        """
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        options = message.options
        partition = self.partition_of(message)
        keys = self.keys(message.queue_name, partition)
        idempotency_key = options.get("idempotency_key")
        ttl = int(options.get("idempotency_ttl_ms") or self.idempotency_ttl_ms) if idempotency_key else 0
        sequence_key = options.get("sequence_key")
        self.emit_before("enqueue", message, delay)
        encoded = message.encode()
        # The idempotency record keeps the message without its arguments: a repeat gets the
        # original id, options and seq, and Redis does not hold every payload for a day.
        record = message.copy(args=(), kwargs={}).encode() if idempotency_key else b""
        view_key = options.get("view_key")
        view_ttl = int(options.get("view_ttl_ms") or DEFAULT_VIEW_TTL_MS) if view_key else 0
        if view_key and self.is_cluster:
            cluster = cast(RedisCluster, self.client)
            if cluster.keyslot(str(view_key)) != cluster.keyslot(keys.stream):
                raise ValueError(
                    f"view_key {view_key!r} must share the partition's hash tag on a Redis Cluster"
                )
        script_keys = [
            keys.stream,
            keys.delayed,
            keys.idempotency(str(idempotency_key or "")),
            keys.sequence(str(sequence_key or "")),
            str(view_key) if view_key else keys.stream,
        ]
        floor = ""
        try:
            while True:
                args = [
                    encoded,
                    record,
                    ttl,
                    "1" if sequence_key else "0",
                    floor,
                    "1" if self.sequence_floor else "0",
                    int(delay or 0),
                    view_ttl,
                ]
                result = self._enqueues.call((self.scripts.enqueue, script_keys, args))
                if int(result[0]) != 2:
                    break
                assert self.sequence_floor is not None and sequence_key
                floor = str(int(self.sequence_floor(str(sequence_key))))
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None
        if int(result[0]) == 1:
            message = self._original(result[1], result[2], result[3], partition)
            metrics.STREAM_IDEMPOTENT_HIT.labels(str(partition)).inc()
        else:
            # The message is the caller's: its options get the partition, id and seq in place.
            options["partition"] = partition
            if result[1]:
                options["stream_id"] = _text(result[1])
            if result[2]:
                options["seq"] = int(result[2])
            metrics.STREAM_ENQUEUE.labels(str(partition), str(options.get("priority", "normal"))).inc()
        self.emit_after("enqueue", message, delay)
        return message

    @staticmethod
    def _original(record: bytes, seq: Any, stream_id: Any, partition: int) -> Message[Any]:
        options: dict[str, Any] = {"idempotent_hit": True, "partition": partition}
        if _text(seq):
            options["seq"] = int(_text(seq))
        if _text(stream_id):
            options["stream_id"] = _text(stream_id)
        return Message.decode(record).copy(options=options)

    def message_view(self, view_key: str) -> Message[Any] | None:
        """The message stored under ``view_key`` at enqueue (with ``options["seq"]``),
        if it is still in flight (or dead-lettered and not expired), else None."""
        try:
            encoded, seq = self.client.hmget(view_key, ["m", "seq"])
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None
        if encoded is None:
            return None
        message = Message.decode(cast(bytes, encoded))
        if _text(seq or b""):
            message.options["seq"] = int(_text(seq))
        return message

    def idempotency_record(
        self, queue_name: str, idempotency_key: str, *, partition_key: str | None = None
    ) -> Message[Any] | None:
        """The message first sent with ``idempotency_key`` while its record lives, else None.

        What :meth:`enqueue` would answer for a repeat (the original message without its
        arguments, with ``seq`` and ``idempotent_hit``), without enqueuing; a record found
        counts as an idempotent hit.
        """
        partition = partition_for(partition_key, self.partitions) if partition_key is not None else 0
        key = self.keys(queue_name, partition).idempotency(idempotency_key)
        try:
            record, seq, stream_id = self.client.hmget(key, ["m", "seq", "id"])
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None
        if record is None:
            return None
        metrics.STREAM_IDEMPOTENT_HIT.labels(str(partition)).inc()
        return self._original(cast(bytes, record), seq, stream_id, partition)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> StreamConsumer:
        """A consumer of the partitions of ``queue_name`` that this process leases."""
        try:
            self.ensure_groups(queue_name)
            state = self._states.get(queue_name)
            if state is None:
                state = self._states[queue_name] = QueueState(queue_name)
            state.start_acker(self)
            if self._coordinator is None:
                self._coordinator = LeaseCoordinator(self)
            self._coordinator.watch(state)
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None
        return StreamConsumer(self, state, prefetch, timeout)

    def close(self) -> None:
        """Write deferred acks, stop leasing, release leases and leave the membership."""
        for state in self._states.values():
            state.stop_acker(self)
        if self._coordinator is not None:
            self._coordinator.stop()
            self._coordinator = None

    def ping(self) -> None:
        """Return when Redis answers; raise ``ConnectionClosed`` when it does not."""
        with redis_unreachable_as_connection_closed():
            self.client.ping()

    def reset(self) -> None:
        """Forget what this broker assumes about Redis and about past workers: stop
        consuming (as :meth:`close`), forget which consumer groups exist (so they are
        created again) and drop the middleware that stopped Dramatiq workers left behind.

        For tests and tools that flush Redis between uses of one broker.
        """
        self.close()
        self._groups_ready.clear()
        self.middleware = [m for m in self.middleware if type(m).__name__ != "_WorkerMiddleware"]

    def flush(self, queue_name: str) -> None:
        """Drop every message of ``queue_name`` (streams, delayed messages, retry state)."""
        for partition in range(self.partitions):
            keys = self.keys(queue_name, partition)
            self.client.delete(keys.stream, keys.state, keys.delayed)
        self._groups_ready.discard(queue_name)
        self.ensure_groups(queue_name)

    def flush_all(self) -> None:
        """Drop every message of every declared queue."""
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(self, queue_name: str, *, interval: int = 50, timeout: int | None = None) -> None:
        """Wait until every message of ``queue_name`` was acked or dead-lettered.

        Raises:
          QueueJoinTimeout: when ``timeout`` milliseconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            if all(s.length == 0 and s.delayed == 0 for s in self.partition_stats(queue_name, cheap=True)):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)

    # -- the consumer's Redis operations --------------------------------------------------

    def ensure_groups(self, queue_name: str) -> None:
        """Create the consumer group of every partition stream of ``queue_name``."""
        if queue_name in self._groups_ready:
            return
        for partition in range(self.partitions):
            try:
                self.client.xgroup_create(
                    self.keys(queue_name, partition).stream, queue_name, id="0", mkstream=True
                )
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self._groups_ready.add(queue_name)

    def _run(self, calls: list[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        """Run scripts in one round trip (single node) or one by one (cluster).

        Raises the first error a script answered with (after all of them ran).
        """
        results = self._run_each(calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _run_each(self, calls: list[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        """Run scripts; each result is a value or the error that script answered with.

        Pipelines use ``EVALSHA`` directly: redis-py's pipelined scripts cost an extra
        ``SCRIPT EXISTS`` round trip on every execute. A script Redis does not know
        (after a restart) is loaded and run again, alone.
        """
        if not calls:
            return []
        if self.is_cluster or len(calls) == 1:
            out: list[Any] = []
            for script, keys, args in calls:
                try:
                    out.append(script(keys=keys, args=args))
                except redis.ResponseError as error:
                    out.append(error)
            return out
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results = cast(list[Any], pipe.execute(raise_on_error=False))
        for i, (result, (script, keys, args)) in enumerate(zip(results, calls, strict=True)):
            if isinstance(result, redis.exceptions.NoScriptError):
                try:
                    results[i] = script(keys=keys, args=args)
                except redis.ResponseError as error:
                    results[i] = error
        return results

    def fetch(
        self, queue_name: str, partitions: list[int], count: int
    ) -> list[tuple[str, int, int, list[StreamEntry]]]:
        """Run the fetch step of each partition: ``(kind, wait_ms, next_due_ms, entries)``."""
        calls = []
        for partition in partitions:
            keys = self.keys(queue_name, partition)
            calls.append(
                (
                    self.scripts.fetch,
                    [keys.stream, keys.state, keys.delayed, keys.lease],
                    [queue_name, self.consumer_name, count, self.consumer_name],
                )
            )
        try:
            results = self._run(calls)
        except redis.ResponseError as error:
            if "NOGROUP" in str(error):  # Redis lost the groups (restarted without persistence)
                self._groups_ready.discard(queue_name)
                self.ensure_groups(queue_name)
                return [("wait", 0, -1, []) for _ in partitions]
            raise
        out = []
        for result in results:
            kind = _text(result[0])
            attempts = [int(a) for a in result[4]]
            entries = [
                _entry(raw, attempts[i] if i < len(attempts) else 0) for i, raw in enumerate(result[3])
            ]
            out.append((kind, int(result[1]), int(result[2]), entries))
        return out

    def read_new(
        self,
        queue_name: str,
        partitions: list[int],
        count: int,
        block_ms: int,
        *,
        acks: tuple[dict[int, list[str]], dict[int, list[str]]] | None = None,
    ) -> dict[int, list[StreamEntry]]:
        """Read never-delivered entries of ``partitions`` (blocking up to ``block_ms``).

        ``acks`` (ids and views by partition, as :meth:`ack_many` takes them) are written
        first, in the same round trip; they are written when this returns.
        """
        if acks is not None and self.is_cluster:
            self.ack_many(queue_name, *acks)
            acks = None
        if self.is_cluster:
            got: dict[int, list[StreamEntry]] = {}
            for partition, fetched in zip(partitions, self.fetch(queue_name, partitions, count), strict=True):
                if fetched[3]:
                    got[partition] = fetched[3]
            return got
        by_stream = {self.keys(queue_name, p).stream: p for p in partitions}
        streams: dict[Any, Any] = dict.fromkeys(by_stream, ">")
        try:
            if acks is None:
                reply = self.client.xreadgroup(
                    queue_name, self.consumer_name, streams, count=count, block=block_ms or None
                )
            else:
                calls = self._ack_calls(queue_name, *acks)
                pipe = self.client.pipeline(transaction=False)
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.xreadgroup(queue_name, self.consumer_name, streams, count=count, block=block_ms or None)
                *acked, reply = pipe.execute(raise_on_error=False)
                for answer, (script, keys, args) in zip(acked, calls, strict=True):
                    if isinstance(answer, redis.exceptions.NoScriptError):
                        script(keys=keys, args=args)  # Redis restarted: load it, ack again
                    elif isinstance(answer, Exception):
                        raise answer
                if isinstance(reply, Exception):
                    raise reply
        except redis.ResponseError as error:
            if "NOGROUP" in str(error):
                self._groups_ready.discard(queue_name)
                self.ensure_groups(queue_name)
                return {}
            raise
        result: dict[int, list[StreamEntry]] = {}
        for stream, raw_entries in cast(list[tuple[Any, list[Any]]], reply or []):
            if raw_entries:
                result[by_stream[_text(stream)]] = [_entry(raw, 0) for raw in raw_entries]
        return result

    def ack_many(
        self,
        queue_name: str,
        ids_by_partition: dict[int, list[str]],
        views_by_partition: dict[int, list[str]] | None = None,
    ) -> None:
        """Ack and delete processed entries of several partitions (one round trip where
        possible), and delete the views of their messages (``view_key`` option)."""
        self._run(self._ack_calls(queue_name, ids_by_partition, views_by_partition or {}))

    def _ack_calls(
        self, queue_name: str, ids_by_partition: dict[int, list[str]], views: dict[int, list[str]]
    ) -> list[tuple[Script, list[str], list[Any]]]:
        calls = []
        for partition, ids in ids_by_partition.items():
            keys = self.keys(queue_name, partition)
            calls.append(
                (
                    self.scripts.ack,
                    [keys.stream, keys.state, *views.get(partition, ())],
                    [queue_name, self.fetch_count, *ids],
                )
            )
        return calls

    def lease_many(self, queue_name: str, partitions: list[int], action: str) -> list[int]:
        """Acquire/renew or release the leases of ``partitions``; 1 where held/released."""
        calls = [
            (
                self.scripts.lease,
                [self.keys(queue_name, p).lease],
                [action, self.consumer_name, self.lease_ttl_ms],
            )
            for p in partitions
        ]
        return [int(r) for r in self._run(calls)]

    def coordinator_release_idle(self, queue_name: str) -> None:
        """Release this process's idle leases of ``queue_name`` (a consumer closed)."""
        if self._coordinator is None:
            return
        try:
            self._coordinator.release_idle(queue_name, everything=True)
        except redis.RedisError as error:
            self.logger.warning("Could not release leases of %s: %s", queue_name, error)

    def dead_letter(
        self,
        queue_name: str,
        partition: int,
        entry: StreamEntry,
        *,
        reason: str,
        error: str,
        traceback: str,
        attempts: int,
    ) -> str | None:
        """Move ``entry`` to the dead-letter stream and ack it, atomically.

        Returns the dead-letter id, or None when this process no longer holds the lease
        (the entry then stays pending for the partition's new owner).
        """
        keys = self.keys(queue_name, partition)
        dead_id = self.scripts.dead_letter(
            keys=[keys.stream, keys.state, keys.dead, keys.lease],
            args=[
                queue_name,
                self.consumer_name,
                entry.stream_id,
                entry.data,
                "" if entry.seq is None else entry.seq,
                reason,
                error[:ERROR_LIMIT_CHARS],
                traceback,
                attempts,
                partition,
                queue_name,
            ],
        )
        if not dead_id:
            self.logger.warning(
                "Lease of %s partition %d lost; %s stays pending.", queue_name, partition, entry.stream_id
            )
            return None
        metrics.STREAM_DEAD_LETTER.labels(str(partition), reason).inc()
        metrics.CONSUMER_DLQ.labels(str(partition), reason).inc()
        metrics.CONSUMER_PROCESSED.labels(str(partition), "dead_lettered").inc()
        message_id = entry.message.message_id if entry.message is not None else "?"
        self.logger.warning(
            "Dead-lettered message %s (%s partition %d, entry %s): %s %s",
            message_id,
            queue_name,
            partition,
            entry.stream_id,
            reason,
            error[:200],
        )
        return _text(dead_id)

    # -- inspection and dead letters ------------------------------------------------------

    def partition_stats(self, queue_name: str, *, cheap: bool = False) -> list[PartitionStats]:
        """Pending, undelivered, length, oldest age, delayed and dead letters per partition.

        With ``cheap``, only lengths are read (for :meth:`join`).
        """
        stats = []
        now_ms = int(time.time() * 1000)
        per_partition = 2 if cheap else 5
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            keys = self.keys(queue_name, partition)
            pipe.xlen(keys.stream)
            pipe.zcard(keys.delayed)
            if not cheap:
                pipe.xlen(keys.dead)
                pipe.xinfo_groups(keys.stream)
                pipe.xrange(keys.stream, count=1)
        try:
            replies = pipe.execute(raise_on_error=False)
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None
        for partition in range(self.partitions):
            length, delayed, *rest = replies[partition * per_partition : (partition + 1) * per_partition]
            if isinstance(length, Exception) or isinstance(delayed, Exception):
                raise ConnectionClosed(length if isinstance(length, Exception) else delayed)
            pending = undelivered = oldest = dead = 0
            if not cheap:
                dead_letters, groups, first = rest
                dead = 0 if isinstance(dead_letters, Exception) else int(dead_letters)
                # Without the group (no consumer ever started) every entry is undelivered.
                undelivered = int(length)
                for group in [] if isinstance(groups, Exception) else groups or []:
                    info = {_text(k): v for k, v in group.items()}
                    if _text(info.get("name")) == queue_name:
                        pending = int(info.get("pending") or 0)
                        lag = info.get("lag")
                        # lag is null after deletions inside the undelivered range: then
                        # everything in the stream that is not pending is undelivered.
                        undelivered = int(lag) if lag is not None else max(0, int(length) - pending)
                if first and not isinstance(first, Exception):
                    first_ms = int(_text(first[0][0]).split("-")[0])
                    oldest = max(0, now_ms - first_ms)
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
                )
            )
        return stats

    def all_partition_stats(self) -> list[PartitionStats]:
        """:meth:`partition_stats` of every declared queue."""
        return [s for q in sorted(self.queues) for s in self.partition_stats(q)]

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
                    self.client.xrange(self.keys(queue_name, p).dead, count=count),
                )
            for raw_id, raw_fields in reply:
                fields = {_text(k): v for k, v in raw_fields.items()}
                data = bytes(fields.get("m", b""))
                try:
                    message: Message[Any] | None = Message.decode(data)
                except Exception:
                    message = None
                seq = _text(fields.get("seq", b""))
                found.append(
                    DeadLetterEntry(
                        queue_name=queue_name,
                        partition=p,
                        dead_letter_id=_text(raw_id),
                        stream_id=_text(fields.get("stream_id", b"")),
                        message=message,
                        raw_message=data,
                        seq=int(seq) if seq else None,
                        reason=_text(fields.get("reason", b"")),
                        error=_text(fields.get("error", b"")),
                        traceback=_text(fields.get("traceback", b"")),
                        attempts=int(_text(fields.get("attempts", b"0")) or 0),
                        dead_lettered_at_ms=int(_text(fields.get("time", b"0")) or 0),
                    )
                )
        return found

    def requeue_dead_letter(self, queue_name: str, partition: int, dead_letter_id: str) -> str:
        """Put a dead letter back on its partition (same message, options and ``seq``).

        Raises:
          DeadLetterNotFound: when it is not (any more) in the dead-letter stream.
        """
        keys = self.keys(queue_name, partition)
        with redis_unreachable_as_connection_closed():
            new_id = self.scripts.requeue_dead(keys=[keys.stream, keys.dead], args=[dead_letter_id])
        if not new_id:
            raise DeadLetterNotFound(f"{queue_name}/{partition}/{dead_letter_id}")
        return _text(new_id)

    def discard_dead_letter(self, queue_name: str, partition: int, dead_letter_id: str) -> bool:
        """Delete a dead letter; False when it was already gone."""
        with redis_unreachable_as_connection_closed():
            return bool(self.client.xdel(self.keys(queue_name, partition).dead, dead_letter_id))

    def lag_collector(self) -> metrics.PartitionLagCollector:
        """A Prometheus collector reporting this broker's partition lag at scrape time."""
        return metrics.PartitionLagCollector(self.all_partition_stats)
