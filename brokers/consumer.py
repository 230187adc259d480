"""The consumer side of :class:`brokers.RedisStreamsBroker`: one partition, one message.

Per queue, one :class:`QueueState` (shared by the consumers Dramatiq restarts after a
connection error, and by the lease coordinator) holds the partitions this process
leases. A partition hands out its next message (or batch) only after the previous one
was acked, retried in place or dead-lettered; entries fetched ahead wait in a local
buffer and stay pending in Redis, so a new owner finds them there, in order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ActorNotFound, ConnectionClosed
from dramatiq.logging import get_logger
from dramatiq.message import Message

from brokers import metrics
from brokers.errors import UNREACHABLE
from brokers.retries import REASON_DECODE_ERROR, REASON_FAILED, REASON_UNKNOWN_ACTOR

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from brokers.broker import RedisStreamsBroker

#: Longest pause, in milliseconds, between two non-blocking reads of idle partitions
#: while other messages of the same process are in flight.
DEFAULT_IDLE_POLL_MAX_MS = 20

#: How often, in milliseconds, an idle partition runs the full fetch step (which also
#: moves due delayed messages into the stream).
DEFAULT_DELAY_CHECK_MS = 250

#: Entries fetched ahead per partition (they wait in a local buffer, pending in Redis).
DEFAULT_FETCH_COUNT = 10

#: How long the acker thread lets deferred acks gather before writing them, in seconds.
#: A crash loses at most this much more acks (their messages run again, in order).
ACK_LINGER_S = 0.005

#: Shortest pause, in seconds, before a non-blocking read follows one that returned entries
#: (while they run). A message finishing sooner wakes the consumer, which then blocks in
#: its next read: at sparse arrivals that makes about one read per message, not two.
FIRST_POLL_GAP_S = 0.005


@dataclass(slots=True)
class StreamEntry:
    """One entry of a partition stream, as fetched."""

    stream_id: str
    data: bytes
    seq: int | None
    attempts: int
    message: Message[Any] | None = None
    decode_error: str = ""


@dataclass(slots=True)
class PartitionState:
    """What this process knows about one partition it leases."""

    partition: int
    #: Monotonic time until which the lease is certainly still ours.
    valid_until: float
    buffer: deque[StreamEntry] = field(default_factory=deque)
    in_flight: StreamMessageProxy | None = None
    #: Still leased, but assigned elsewhere: hand out nothing more, release when idle.
    draining: bool = False
    #: When to run the full fetch step next (pending entries, retries, delayed entries).
    next_fetch_at: float = 0.0
    #: Nothing pending at the last fetch: new entries can be read with XREADGROUP directly.
    clean: bool = False
    #: Transient failures in a row (not durable: they use no retry budget).
    transient_failures: int = 0
    #: The batch limit fetched with the entries (after a failing batch was split).
    batch_limit: int = 0


class QueueState:
    """The partitions of one queue leased by this process; guarded by ``lock``.

    Acks are deferred: a processed message frees its partition at once (the next one may
    start: order is about processing, not acking) and its entry ids wait in ``unacked``
    until the acker thread writes them, many partitions per round trip. A crash loses
    only unwritten acks, whose messages then run again (at least once, still in order).
    Nothing that reads pending entries (the fetch step, a retry, a dead letter, a lease
    release) runs for a partition before its acks are written.
    """

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.partitions: dict[int, PartitionState] = {}
        self.in_flight = 0
        #: Entry ids processed successfully, per partition, not yet acked in Redis.
        self.unacked: dict[int, list[str]] = {}
        #: Views (``view_key`` option) of those messages, deleted with the ack.
        self.unacked_views: dict[int, list[str]] = {}
        self.ack_ready = threading.Event()
        self._flush_lock = threading.Lock()
        self._acker: threading.Thread | None = None
        self._stop = threading.Event()

    def is_busy(self, partition: int) -> bool:
        """Whether ``partition`` has a message in flight or acks unwritten (call with the lock)."""
        state = self.partitions.get(partition)
        return bool(self.unacked.get(partition)) or (state is not None and state.in_flight is not None)

    def flush_acks(self, broker: RedisStreamsBroker) -> None:
        """Write every deferred ack now (one round trip on a single node)."""
        with self._flush_lock:
            batch, views = self._deferred()
            if not batch:
                return
            broker.ack_many(self.queue_name, batch, views)
            self._written(batch, views)
        self.wakeup.set()

    @contextmanager
    def acks_to_send(self) -> Iterator[tuple[dict[int, list[str]], dict[int, list[str]]] | None]:
        """The deferred acks, for a caller that sends them in a round trip of its own
        (the consumer, ahead of its blocking read); None when there are none or another
        thread is writing them. They count as written when the block exits normally."""
        if not self._flush_lock.acquire(blocking=False):
            yield None
            return
        try:
            batch, views = self._deferred()
            if not batch:
                yield None
                return
            yield batch, views
            self._written(batch, views)
        finally:
            self._flush_lock.release()

    def _deferred(self) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
        with self.lock:
            batch = {p: list(ids) for p, ids in self.unacked.items() if ids}
            views = {p: list(keys) for p, keys in self.unacked_views.items() if keys}
        return batch, views

    def _written(self, batch: dict[int, list[str]], views: dict[int, list[str]]) -> None:
        with self.lock:
            for written, pending in ((batch, self.unacked), (views, self.unacked_views)):
                for p, items in written.items():
                    rest = pending.get(p, [])[len(items) :]
                    if rest:
                        pending[p] = rest
                    else:
                        pending.pop(p, None)

    def start_acker(self, broker: RedisStreamsBroker) -> None:
        """Start the thread that writes deferred acks (once)."""
        if self._acker is not None:
            return
        self._stop.clear()
        self._acker = threading.Thread(
            target=self._ack_loop, args=(broker,), name="stream-acker", daemon=True
        )
        self._acker.start()

    def stop_acker(self, broker: RedisStreamsBroker) -> None:
        """Stop the acker after writing what is left."""
        self._stop.set()
        self.ack_ready.set()
        if self._acker is not None:
            self._acker.join(timeout=10)
            self._acker = None
        try:
            self.flush_acks(broker)
        except redis.RedisError as error:
            get_logger(__name__, type(self)).warning(
                "Could not write the last acks of %s (they run again): %s", self.queue_name, error
            )

    def _ack_loop(self, broker: RedisStreamsBroker) -> None:
        logger = get_logger(__name__, type(self))
        while not self._stop.is_set():
            if self.ack_ready.wait(0.5):
                # Linger: an idle consumer sends the acks ahead of its next blocking read
                # (no round trip of their own); a busy one gets more partitions per write.
                self._stop.wait(ACK_LINGER_S)
            self.ack_ready.clear()
            try:
                self.flush_acks(broker)
            except redis.RedisError as error:
                logger.warning("Writing acks of %s failed (retrying): %s", self.queue_name, error)
                self._stop.wait(0.5)


class StreamMessageProxy(MessageProxy):
    """A message (or a batch of consecutive messages) of one partition, in flight."""

    def __init__(self, message: Message[Any], *, partition: int, entries: list[StreamEntry]) -> None:
        super().__init__(message)
        self.partition = partition
        self.entries = entries
        #: Failures so far of the head entry (durable).
        self.attempts = entries[0].attempts
        self.transient_failures = 0
        self.handed_out_at = time.monotonic()
        self.error = ""
        self.traceback = ""
        self.dead_letter_reason: str | None = None
        self.retry_delay_ms: int | None = None
        self.count_attempt = False
        self.split = False
        self.finished = False

    def __str__(self) -> str:
        if len(self.entries) > 1:
            return (
                f"{self.actor_name}[batch of {len(self.entries)}, partition {self.partition}, "
                f"entries {self.entries[0].stream_id}..{self.entries[-1].stream_id}]"
            )
        head = self.entries[0].stream_id
        return f"{self.actor_name}[{self.message_id}, partition {self.partition}, entry {head}]"

    def retry_in_place(self, *, delay_ms: int, count_attempt: bool) -> None:
        """Keep the entry pending at the head of its partition and redeliver it later."""
        self.retry_delay_ms = delay_ms
        self.count_attempt = count_attempt

    def split_batch(self) -> None:
        """Retry this batch's entries at once, in smaller batches."""
        self.split = True

    def fail_with(self, reason: str) -> None:
        """Mark the message for the dead-letter stream, with ``reason``."""
        self.dead_letter_reason = reason
        self.fail()


class StreamConsumer(Consumer):
    """Hands out the messages of the partitions this process leases for one queue."""

    def __init__(self, broker: RedisStreamsBroker, state: QueueState, prefetch: int, timeout: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.state = state
        self.queue_name = state.queue_name
        self.prefetch = max(1, prefetch)
        self.timeout_s = timeout / 1000
        self.fetch_count = max(broker.fetch_count, broker.largest_batch_size(state.queue_name))
        self._read_gap_s = 0.0
        self._next_read_at = 0.0
        self._turn = 0

    # -- Dramatiq's Consumer contract -----------------------------------------------------

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                proxy = self._hand_out()
                if proxy is not None:
                    return proxy
                now = time.monotonic()
                if now >= deadline:
                    return None
                fetchable = self._fetchable(now)
                unacked = self.state.unacked
                due = [
                    p
                    for p in fetchable
                    if (not p.clean or p.next_fetch_at <= now) and not unacked.get(p.partition)
                ]
                if due:
                    self._fetch(due)
                    continue
                idle = self.broker.can_block and self.state.in_flight == 0
                if fetchable and (now >= self._next_read_at or idle):
                    block_ms = 0
                    if idle:
                        until = min([deadline, *(p.next_fetch_at for p in fetchable)])
                        # STREAM_POLL_INTERVAL_MS bounds one blocking read.
                        block_ms = max(1, min(int((until - now) * 1000), self.broker.poll_interval_ms))
                    if self._read_new(fetchable, block_ms):
                        # The read just covered every idle partition: polling again at
                        # once (while the new messages run) would mostly find nothing.
                        self._read_gap_s = 0.0
                        self._next_read_at = time.monotonic() + FIRST_POLL_GAP_S
                    else:
                        self._read_gap_s = min(
                            max(self._read_gap_s * 2, 0.001), self.broker.idle_poll_max_ms / 1000
                        )
                        self._next_read_at = time.monotonic() + self._read_gap_s
                    continue
                wake_at = min(
                    [
                        deadline,
                        *(p.next_fetch_at for p in fetchable if not unacked.get(p.partition)),
                        *([self._next_read_at] if any(p.clean for p in fetchable) else []),
                    ]
                )
                self.state.wakeup.wait(max(0.0005, wake_at - now))
                self.state.wakeup.clear()
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None

    def ack(self, message: MessageProxy) -> None:
        assert isinstance(message, StreamMessageProxy)
        broker = self.broker
        partition = message.partition
        keys = broker.keys(self.queue_name, partition)
        ids = [entry.stream_id for entry in message.entries]
        label = str(partition)
        elapsed_ms = (time.monotonic() - message.handed_out_at) * 1000
        try:
            if message.retry_delay_ms is not None or message.split:
                # Earlier successes of the partition must be acked before it waits in place.
                self.state.flush_acks(broker)
                limit = max(1, len(ids) // 2) if message.split else 0
                delay = message.retry_delay_ms or 0
                broker.scripts.retry(
                    keys=[keys.state], args=[delay, int(message.count_attempt), limit, ids[0]]
                )
                self._finish(message, retry_in_s=delay / 1000, transient=not message.count_attempt)
                metrics.CONSUMER_PROCESSED.labels(label, "retry").inc()
            else:
                views = [
                    str(entry.message.options["view_key"])
                    for entry in message.entries
                    if entry.message is not None and entry.message.options.get("view_key")
                ]
                with self.state.lock:
                    self.state.unacked.setdefault(partition, []).extend(ids)
                    if views:
                        self.state.unacked_views.setdefault(partition, []).extend(views)
                self._finish(message)
                self.state.ack_ready.set()
                metrics.CONSUMER_PROCESSED.labels(label, "success").inc(len(ids))
                metrics.STREAM_PROCESSING_DURATION.observe(elapsed_ms)
            metrics.CONSUMER_PROCESSING_DURATION.labels(label).observe(elapsed_ms)
        except UNREACHABLE as error:
            raise ConnectionClosed(error) from None

    def nack(self, message: MessageProxy) -> None:
        assert isinstance(message, StreamMessageProxy)
        reason = message.dead_letter_reason
        exception = getattr(message, "_exception", None)
        if reason is None:
            reason = REASON_UNKNOWN_ACTOR if isinstance(exception, ActorNotFound) else REASON_FAILED
        error = message.error or (f"{type(exception).__name__}: {exception}" if exception else "")
        try:
            self.state.flush_acks(self.broker)
            for entry in message.entries:
                self.broker.dead_letter(
                    self.queue_name,
                    message.partition,
                    entry,
                    reason=reason,
                    error=error,
                    traceback=message.traceback,
                    attempts=entry.attempts + 1,
                )
            self._finish(message)
        except UNREACHABLE as error_:
            raise ConnectionClosed(error_) from None

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        # Fetched but never started: the entries are still pending in Redis, where the
        # partition's next owner (or this process) claims them first, in order.
        for message in messages:
            if isinstance(message, StreamMessageProxy):
                self._finish(message, drop_buffer=True)

    def close(self) -> None:
        try:
            self.state.flush_acks(self.broker)
        except redis.RedisError as error:
            self.logger.warning("Could not write acks on close (they run again): %s", error)
        self.broker.coordinator_release_idle(self.queue_name)

    # -- internals ------------------------------------------------------------------------

    def _fetchable(self, now: float) -> list[PartitionState]:
        with self.state.lock:
            return [
                p
                for p in self.state.partitions.values()
                if p.in_flight is None and not p.buffer and not p.draining and p.valid_until > now
            ]

    def _fetch(self, partitions: list[PartitionState]) -> None:
        """Run the full fetch step for ``partitions`` (one round trip where possible).

        The step claims pending entries, so a partition whose acks are not written yet
        is left out (it would get back entries it already processed).
        """
        with self.state.lock:
            partitions = [p for p in partitions if not self.state.unacked.get(p.partition)]
        if not partitions:
            return
        results = self.broker.fetch(self.queue_name, [p.partition for p in partitions], self.fetch_count)
        now = time.monotonic()
        for p, result in zip(partitions, results, strict=True):
            kind, wait_ms, next_due_ms, entries = result
            with self.state.lock:
                if self.state.partitions.get(p.partition) is not p:
                    continue
                check_s = self.broker.delay_check_ms / 1000
                if next_due_ms >= 0:
                    check_s = min(check_s, next_due_ms / 1000)
                if kind == "lost":
                    p.valid_until = 0.0
                elif kind == "wait":
                    p.clean = False
                    p.next_fetch_at = now + wait_ms / 1000
                else:
                    p.clean = kind in ("empty", "new")
                    p.next_fetch_at = now + check_s if p.clean else now
                    p.buffer.extend(entries)

    def _read_new(self, partitions: list[PartitionState], block_ms: int) -> bool:
        """Read never-delivered entries of clean idle partitions; True if any came."""
        clean = [p for p in partitions if p.clean]
        if not self.broker.can_block:
            # On a cluster, reading new entries is the fetch step, which claims pending
            # ones too: it must wait until the partition's deferred acks are written.
            clean = [p for p in clean if not self.state.unacked.get(p.partition)]
        if not clean:
            return False
        ids = [p.partition for p in clean]
        if block_ms:
            # Nothing is in flight, so no ack can join meanwhile: the deferred ones go
            # ahead of the blocking read, in the same round trip.
            with self.state.acks_to_send() as acks:
                got = self.broker.read_new(self.queue_name, ids, self.fetch_count, block_ms, acks=acks)
        else:
            got = self.broker.read_new(self.queue_name, ids, self.fetch_count, block_ms)
        if not got:
            return False
        with self.state.lock:
            for partition, entries in got.items():
                p = self.state.partitions.get(partition)
                # Entries of a partition lost meanwhile stay pending for its new owner.
                if p is not None and p.clean and p.in_flight is None:
                    p.buffer.extend(entries)
        return True

    def _hand_out(self) -> StreamMessageProxy | None:
        now = time.monotonic()
        dead: list[tuple[int, StreamEntry]] = []
        try:
            with self.state.lock:
                if self.state.in_flight >= self.prefetch:
                    return None
                partitions = list(self.state.partitions.values())
                count = len(partitions)
                for i in range(count):
                    p = partitions[(self._turn + i) % count]
                    if p.in_flight is not None or p.draining or p.valid_until <= now:
                        continue
                    while p.buffer and p.buffer[0].message is None:
                        dead.append((p.partition, p.buffer.popleft()))
                    if not p.buffer:
                        continue
                    self._turn = (self._turn + i + 1) % count
                    proxy = self._make_proxy(p)
                    p.in_flight = proxy
                    self.state.in_flight += 1
                    metrics.STREAM_DEQUEUE.labels(str(p.partition), self.queue_name).inc(len(proxy.entries))
                    return proxy
                return None
        finally:
            for partition, entry in dead:
                self.broker.dead_letter(
                    self.queue_name,
                    partition,
                    entry,
                    reason=REASON_DECODE_ERROR,
                    error=entry.decode_error,
                    traceback="",
                    attempts=entry.attempts + 1,
                )

    def _make_proxy(self, p: PartitionState) -> StreamMessageProxy:
        head = p.buffer.popleft()
        assert head.message is not None
        entries = [head]
        batch_size = self.broker.batch_size_of(head.message.actor_name)
        if batch_size is not None:
            if p.batch_limit:
                batch_size = min(batch_size, p.batch_limit)
            while (
                len(entries) < batch_size
                and p.buffer
                and p.buffer[0].message is not None
                and p.buffer[0].message.actor_name == head.message.actor_name
            ):
                entries.append(p.buffer.popleft())
            messages = [self._with_stream_options(e, p.partition) for e in entries]
            message: Message[Any] = head.message.copy(
                args=(messages,), kwargs={}, options={"batch": len(entries), "partition": p.partition}
            )
        else:
            message = self._with_stream_options(head, p.partition)
        proxy = StreamMessageProxy(message, partition=p.partition, entries=entries)
        proxy.transient_failures = p.transient_failures
        return proxy

    @staticmethod
    def _with_stream_options(entry: StreamEntry, partition: int) -> Message[Any]:
        message = entry.message
        assert message is not None
        # The entry's decoded message is this consumer's own: its options are set in place.
        options = message.options
        options["stream_id"] = entry.stream_id
        options["partition"] = partition
        options["retries"] = entry.attempts
        if entry.seq is not None:
            options["seq"] = entry.seq
        return message

    def _finish(
        self,
        message: StreamMessageProxy,
        *,
        retry_in_s: float | None = None,
        transient: bool = False,
        drop_buffer: bool = False,
    ) -> None:
        with self.state.lock:
            p = self.state.partitions.get(message.partition)
            if p is not None and p.in_flight is message:
                p.in_flight = None
                if retry_in_s is not None:
                    # The failed entry and the ones fetched after it stay pending; the
                    # fetch step claims them again, in order, once the backoff is over.
                    p.buffer.clear()
                    p.clean = False
                    p.next_fetch_at = time.monotonic() + retry_in_s
                    p.transient_failures = p.transient_failures + 1 if transient else 0
                    if message.split:
                        p.batch_limit = max(1, len(message.entries) // 2)
                else:
                    p.transient_failures = 0
                    if p.batch_limit:
                        p.batch_limit = 0 if p.batch_limit * 2 >= self.fetch_count else p.batch_limit * 2
                if drop_buffer:
                    p.buffer.clear()
                    p.clean = False
            if not message.finished:
                message.finished = True
                self.state.in_flight -= 1
        self.state.wakeup.set()
