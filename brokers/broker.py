"""A Dramatiq broker on partitioned Redis Streams, ordered per key, retried in place.

The layers, arrows pointing one way (docs/broker.md draws them):
``keys`` + ``lua/`` → ``store`` (every Redis call) → ``partition`` (per-key gate, no
Redis) and ``scheduler`` (decisions, no Redis) → ``consumer`` and ``leases`` → this
module, the ``dramatiq.Broker`` face. ``inspect`` reads queues for operators.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, cast

import redis
from dramatiq.broker import Broker
from dramatiq.errors import QueueJoinTimeout
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import Middleware, default_middleware
from dramatiq.middleware.retries import Retries
from redis.cluster import RedisCluster

from brokers import metrics
from brokers.consumer import ConsumerSettings, StreamConsumer
from brokers.enqueue import Enqueuer, EnqueueSettings
from brokers.errors import redis_unreachable_as_connection_closed
from brokers.inspect import DeadLetterRequeue, Inspector
from brokers.keys import PartitionKeys
from brokers.leases import LeaseCoordinator
from brokers.ownership import QueueState
from brokers.partition import PartitionState
from brokers.proxy import LeaseGuard
from brokers.reader import (
    DEFAULT_DELAY_CHECK_MS,
    DEFAULT_FETCH_COUNT,
    DEFAULT_IDLE_POLL_MAX_MS,
    ReaderSettings,
)
from brokers.records import DeadLetterBacklog, DeadLetterEntry, PartitionStats, StreamEntry
from brokers.retries import InPlaceRetries
from brokers.store import StreamStore

#: Default number of partitions per queue.
DEFAULT_PARTITIONS = 16

#: Lease time-to-live in milliseconds; a crashed process's partitions move after this.
DEFAULT_LEASE_TTL_MS = 3000

#: Interval between lease heartbeats, in milliseconds (renewal, rebalancing, takeover).
DEFAULT_HEARTBEAT_INTERVAL_MS = 1000

#: How long an idempotency key is remembered, in milliseconds (24 h, as Stripe does).
DEFAULT_IDEMPOTENCY_TTL_MS = 86_400_000

#: How long an enqueue waits for ``min_replicas_ack`` replicas to confirm, in milliseconds.
DEFAULT_REPLICAS_ACK_TIMEOUT_MS = 1000

#: Longest single blocking wait of idle partitions, in milliseconds.
DEFAULT_POLL_INTERVAL_MS = 5000

#: How long an idempotency record kept until its message is done lives after the ack, in
#: milliseconds: a repeat racing with the ack is still answered from Redis meanwhile.
DEFAULT_IDEMPOTENCY_GRACE_MS = 60_000

#: Entries one partition may hold in a worker's memory (waiting behind blocked keys or in
#: flight); when full, the partition reads no more until some finish.
DEFAULT_LOOKAHEAD = 1000

#: What is kept in order: messages of one ordering key, or everything in a partition.
Ordering = Literal["key", "partition"]


class RedisStreamsBroker(Broker):
    """A Dramatiq broker on Redis Streams with per-key order and in-place retries.

    Parameters:
      url: Redis URL, used when ``client`` is not given.
      partitions: partitions per queue; a message's partition is
        ``murmur3(options["partition_key"] or message_id) % partitions``.
      namespace: prefix (and hash-tag prefix) of every key.
      client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` to use.
      middleware: as for any Dramatiq broker; a stock ``Retries`` is replaced by
        :class:`brokers.retries.InPlaceRetries` with the same settings.
      ordering: ``"key"``: messages of one ``partition_key`` run one at a time in order,
        keys of a partition run side by side; ``"partition"``: one message (or batch) of
        a partition at a time.
      lookahead: entries one partition may hold in memory past blocked keys.
      lease_ttl_ms, heartbeat_interval_ms: partition lease tuning.
      idempotency_ttl_ms: default lifetime of idempotency records (0: until done).
      idempotency_grace_ms: lifetime of a record kept until done, after the ack.
      min_replicas_ack, replicas_ack_timeout_ms: an enqueue returns only once that many
        replicas hold it (``WAIT``), else raises :class:`brokers.errors.NotReplicated`.
      poll_interval_ms: longest blocking wait of idle partitions.
      fetch_count: entries read per partition and round trip, at most.
      idle_poll_max_ms, delay_check_ms: consumer polling tuning.
      sequence_floor: called with a sequence key whose counter is missing in Redis
        (new, or lost with Redis's data); returns the last number already used.

    Message options: ``partition_key``, ``idempotency_key`` (with optional
    ``idempotency_ttl_ms``; a record keeps ``fingerprint`` and ``correlation_id``),
    ``sequence_key`` and ``locate``; the returned message carries ``seq`` and, for a
    repeat, ``idempotent_hit``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        namespace: str = "dramatiq",
        client: redis.Redis | RedisCluster | None = None,
        middleware: list[Middleware] | None = None,
        ordering: Ordering = "key",
        lookahead: int = DEFAULT_LOOKAHEAD,
        lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        idempotency_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS,
        idempotency_grace_ms: int = DEFAULT_IDEMPOTENCY_GRACE_MS,
        min_replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = DEFAULT_REPLICAS_ACK_TIMEOUT_MS,
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
        if not any(isinstance(m, LeaseGuard) for m in middleware):
            middleware.insert(0, LeaseGuard())
        super().__init__(middleware=middleware)
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if heartbeat_interval_ms * 2 > lease_ttl_ms:
            raise ValueError("heartbeat_interval_ms must be at most half of lease_ttl_ms")
        if ordering not in ("key", "partition"):
            raise ValueError("ordering must be 'key' or 'partition'")
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.logger = get_logger(__name__, type(self))
        self.partitions = partitions
        self.namespace = namespace
        self.ordering = ordering
        self.lookahead = lookahead
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
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store = StreamStore(
            client,
            namespace=namespace,
            consumer_name=self.consumer_name,
            idempotency_grace_ms=idempotency_grace_ms,
            min_replicas_ack=min_replicas_ack,
            replicas_ack_timeout_ms=replicas_ack_timeout_ms,
        )
        self.enqueuer = Enqueuer(self.store, EnqueueSettings(partitions, idempotency_ttl_ms, sequence_floor))
        self.inspector = Inspector(self.store, partitions)
        self._states: dict[str, QueueState] = {}
        self._coordinator: LeaseCoordinator | None = None
        self._batch_sizes: dict[str, int | None] = {}

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

    @property
    def is_cluster(self) -> bool:
        return self.store.is_cluster

    # -- names and actor rules ------------------------------------------------------------

    def keys(self, queue_name: str, partition: int) -> PartitionKeys:
        """Key names of ``queue_name``'s ``partition``."""
        return self.store.keys(queue_name, partition)

    def partition_of(self, message: Message[Any]) -> int:
        """The partition ``message`` goes to."""
        return self.enqueuer.partition_of(message)

    def batch_size_of(self, actor_name: str) -> int | None:
        """How many messages ``actor_name`` takes at once; None unless it takes batches.

        An actor that declares ``batch_size`` (even 1) always receives a list of messages.
        """
        if actor_name in self._batch_sizes:
            return self._batch_sizes[actor_name]
        actor = self.actors.get(actor_name)
        size = (
            None
            if actor is None or "batch_size" not in actor.options
            else max(1, int(actor.options["batch_size"]))
        )
        if actor is not None:
            self._batch_sizes[actor_name] = size
        return size

    def declare_actor(self, actor: Any) -> None:
        self._batch_sizes.pop(actor.actor_name, None)
        super().declare_actor(actor)

    def max_deliveries_of(self, actor_name: str) -> int:
        """Runs of one message that never finish that ``actor_name`` allows."""
        retries = next((m for m in self.middleware if isinstance(m, InPlaceRetries)), InPlaceRetries())
        actor = self.actors.get(actor_name)
        return retries.max_deliveries(actor.options if actor is not None else {})

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
        ``idempotency_key``, the *original* message (its id, timestamp, ``seq``,
        ``fingerprint`` and ``correlation_id``; no arguments) with ``options["idempotent_hit"]``.

        The idempotency record lives ``idempotency_ttl_ms`` (option; the broker's default
        otherwise); ``0`` keeps it until the message is done: after its ack, for the
        broker's ``idempotency_grace_ms``; when dead-lettered, until it is requeued and done,
        or discarded. With option ``locate``, the same script notes where the message is
        (:meth:`locate` finds it), forgotten with the ack.
        """
        return self.enqueue_many([message], delay=delay)[0]

    def enqueue_many(self, messages: list[Message[Any]], *, delay: int | None = None) -> list[Message[Any]]:
        """:meth:`enqueue` several messages: one atomic script call per partition, all
        partitions in one round trip. Answers in order; a repeat within the list is answered
        with the first message."""
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        for message in messages:
            self.emit_before("enqueue", message, delay)
        sent = self.enqueuer.enqueue(messages, delay)
        for message in sent:
            self.emit_after("enqueue", message, delay)
        return sent

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> StreamConsumer:
        """A consumer of the partitions of ``queue_name`` that this process leases."""
        self.store.ensure_groups(queue_name, self.partitions)
        state = self._states.get(queue_name)
        if state is None:
            state = self._states[queue_name] = QueueState(queue_name, self.store, self._new_partition)
        state.acks.start()
        if self._coordinator is None:
            self._coordinator = LeaseCoordinator(
                self.store,
                partitions=self.partitions,
                lease_ttl_ms=self.lease_ttl_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
            )
        self._coordinator.watch(state)
        settings = ConsumerSettings(
            reading=ReaderSettings(
                fetch_count=self.fetch_count,
                poll_interval_ms=self.poll_interval_ms,
                idle_poll_max_ms=self.idle_poll_max_ms,
                delay_check_ms=self.delay_check_ms,
                can_block=not self.is_cluster,
            ),
            batch_limit=self._batch_limit,
            max_deliveries=self._max_deliveries,
            on_close=lambda: self._release_idle(queue_name),
        )
        return StreamConsumer(self.store, state, settings, prefetch, timeout)

    def _new_partition(self, partition: int, valid_until: float) -> PartitionState:
        return PartitionState(
            partition, valid_until=valid_until, lookahead=self.lookahead, per_key=self.ordering == "key"
        )

    def _batch_limit(self, entry: StreamEntry) -> int | None:
        return self.batch_size_of(entry.message.actor_name) if entry.message is not None else None

    def _max_deliveries(self, entry: StreamEntry) -> int:
        return self.max_deliveries_of(entry.message.actor_name if entry.message is not None else "")

    def _release_idle(self, queue_name: str) -> None:
        if self._coordinator is None:
            return
        try:
            self._coordinator.release_idle(queue_name, everything=True)
        except Exception as error:
            self.logger.warning("Could not release leases of %s: %s", queue_name, error)

    def close(self) -> None:
        """Write deferred acks, stop leasing, release leases and leave the membership."""
        for state in self._states.values():
            state.acks.stop()
        if self._coordinator is not None:
            self._coordinator.stop()
            self._coordinator = None
        self._states.clear()

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
        self.store.forget_groups()
        self.middleware = [m for m in self.middleware if type(m).__name__ != "_WorkerMiddleware"]

    def flush(self, queue_name: str) -> None:
        """Drop every message of ``queue_name`` (streams, delayed messages, retry state)."""
        with redis_unreachable_as_connection_closed():
            for partition in range(self.partitions):
                keys = self.keys(queue_name, partition)
                self.client.delete(keys.stream, keys.state, keys.delayed)
        self.store.forget_groups()
        self.store.ensure_groups(queue_name, self.partitions)

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

    # -- inspection (see brokers.inspect) -------------------------------------------------

    def partition_stats(self, queue_name: str, *, cheap: bool = False) -> list[PartitionStats]:
        """Per partition: pending, undelivered, length, oldest age, delayed, dead letters
        and the lease holder (:meth:`brokers.inspect.Inspector.partition_stats`)."""
        return self.inspector.partition_stats(queue_name, cheap=cheap)

    def overview(self, queue_names: list[str]) -> tuple[dict[str, list[PartitionStats]], list[str]]:
        """:meth:`partition_stats` of ``queue_names`` and :meth:`members`, in one round trip."""
        return self.inspector.overview(queue_names)

    def members(self) -> list[str]:
        """The live consumer processes (consumer names, as partition owners show them)."""
        return self.inspector.members()

    def all_partition_stats(self) -> list[PartitionStats]:
        """:meth:`partition_stats` of every declared queue."""
        return [s for q in sorted(self.queues) for s in self.partition_stats(q)]

    def dead_letters(
        self, queue_name: str, *, partition: int | None = None, after: str | None = None, count: int = 1000
    ) -> list[DeadLetterEntry]:
        """Dead letters, oldest first, paged (:meth:`brokers.inspect.Inspector.dead_letters`)."""
        return self.inspector.dead_letters(queue_name, partition=partition, after=after, count=count)

    def trim_dead_letters(self, queue_name: str, partition: int, up_to: str) -> int:
        """Delete a partition's dead-letter entries up to id ``up_to`` (kept elsewhere now)."""
        return self.inspector.trim_dead_letters(queue_name, partition, up_to)

    def dead_letter_backlog(self, queue_name: str) -> list[DeadLetterBacklog]:
        """Entries and the oldest one's age per dead-letter stream, in one round trip."""
        return self.inspector.dead_letter_backlog(queue_name)

    def requeue_dead_letter(
        self,
        queue_name: str,
        partition: int,
        dead_letter_id: str,
        *,
        message: Message[Any] | None = None,
        seq: int | None = None,
    ) -> str:
        """Put a dead letter back on its partition (same message, options and ``seq``)."""
        return self.inspector.requeue_dead_letter(
            queue_name, partition, dead_letter_id, message=message, seq=seq
        )

    def requeue_dead_letters(self, queue_name: str, dead_letters: list[DeadLetterRequeue]) -> list[str]:
        """Requeue many dead letters, each with its message and ``seq``, in one round trip."""
        return self.inspector.requeue_dead_letters(queue_name, dead_letters)

    def discard_dead_letter(
        self, queue_name: str, partition: int, dead_letter_id: str, *, message: Message[Any] | None = None
    ) -> bool:
        """Delete a dead letter and what its message kept in Redis; False when it was gone."""
        return self.inspector.discard_dead_letter(queue_name, partition, dead_letter_id, message=message)

    def locate(self, queue_name: str, partition: int, message_id: str) -> Message[Any] | None:
        """A message enqueued with ``locate``, while pending or dead-lettered
        (:meth:`brokers.inspect.Inspector.locate`)."""
        return self.inspector.locate(queue_name, partition, message_id)

    def lag_collector(self) -> metrics.PartitionLagCollector:
        """A Prometheus collector reporting this broker's partition lag at scrape time."""
        return metrics.PartitionLagCollector(self.all_partition_stats)
