"""The consumer: hands out the messages of the partitions this process leases, per key in
order, and carries out each outcome (ack, retry in place, split, dead letter).

Redis is reached only through :class:`brokers.store.StreamStore`; per-partition state
changes only through :class:`brokers.partition.PartitionState`'s methods; when nothing
can be handed out, :class:`brokers.reader.PartitionReader` reads or waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.message import Message

from brokers import metrics
from brokers.keys import where_field
from brokers.ownership import QueueState
from brokers.partition import PartitionState
from brokers.proxy import StreamMessageProxy
from brokers.reader import PartitionReader, ReaderSettings
from brokers.records import (
    REASON_CRASHED_WORKER,
    REASON_DECODE_ERROR,
    REASON_FAILED,
    REASON_UNKNOWN_ACTOR,
    StreamEntry,
)
from brokers.store import Done, StreamStore


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """The broker's tuning and the actor rules the consumer applies."""

    reading: ReaderSettings
    #: The batch limit of an entry's actor (None: not a batch actor).
    batch_limit: Callable[[StreamEntry], int | None]
    #: How many runs that never finish an entry's actor allows (``max_deliveries``).
    max_deliveries: Callable[[StreamEntry], int]
    #: Called when the consumer closes (releases idle leases).
    on_close: Callable[[], None]


class StreamConsumer(Consumer):
    """Hands out the messages of the partitions this process leases for one queue."""

    def __init__(
        self, store: StreamStore, state: QueueState, settings: ConsumerSettings, prefetch: int, timeout: int
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.state = state
        self.settings = settings
        self.queue_name = state.queue_name
        self.prefetch = max(1, prefetch)
        self.timeout_s = timeout / 1000
        self.reader = PartitionReader(store, state, settings.reading)
        self._turn = 0

    # -- Dramatiq's Consumer contract -----------------------------------------------------

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            proxy = self._hand_out()
            if proxy is not None:
                return proxy
            now = time.monotonic()
            if now >= deadline:
                return None
            with self.state.lock:
                ready = self.state.in_flight < self.prefetch and any(
                    p.usable(now) and p.has_ready(now) for p in self.state.partitions.values()
                )
            if not ready:
                self.reader.step(now, deadline)

    def ack(self, message: MessageProxy) -> None:
        assert isinstance(message, StreamMessageProxy)
        elapsed_ms = (time.monotonic() - message.handed_out_at) * 1000
        counters = metrics.partition_metrics(message.partition)
        if message.lease_lost:
            self._settle(message, lambda p: p.put_back(message.entries), lost=True)
            return
        if message.retry_delay_ms is not None:
            self._retry(message)
            counters.retried.inc()
        elif message.split:
            self._settle(message, lambda p: p.isolate(message.entries))
        else:
            self.state.acks.add(message.partition, self._done(message))
            self._settle(message, lambda p: p.finished(message.entries))
            counters.succeeded.inc(len(message.entries))
            metrics.STREAM_PROCESSING_DURATION.observe(elapsed_ms)
        counters.duration.observe(elapsed_ms)

    def _done(self, message: StreamMessageProxy) -> Done:
        """What the ack of a successful batch writes: its ids, where its messages were (to
        forget) and the idempotency records they kept until done."""
        done = Done([e.stream_id for e in message.entries])
        keys = self.store.keys(self.queue_name, message.partition)
        for entry in message.entries:
            options = entry.message.options if entry.message is not None else {}
            if options.get("locate") and entry.message is not None:
                done.located.append(where_field(entry.message.message_id))
            if options.get("idempotency_key") and options.get("idempotency_ttl_ms") == 0:
                done.records.append(keys.idempotency(str(options["idempotency_key"])))
        return done

    def nack(self, message: MessageProxy) -> None:
        assert isinstance(message, StreamMessageProxy)
        reason = message.dead_letter_reason
        exception = getattr(message, "_exception", None)
        if reason is None:
            reason = REASON_UNKNOWN_ACTOR if isinstance(exception, ActorNotFound) else REASON_FAILED
        error = message.error or (f"{type(exception).__name__}: {exception}" if exception else "")
        held = all(
            self._dead_letter(message.partition, entry, reason, error, message.traceback, entry.attempts + 1)
            for entry in message.entries
        )
        self._settle(message, lambda p: p.finished(message.entries), lost=not held)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        # Handed out but never started (the worker stops): their entries are still pending
        # in Redis, where the partition's next owner (or this process) claims them first.
        for message in messages:
            if isinstance(message, StreamMessageProxy):
                entries = message.entries
                self._settle(message, lambda p: p.put_back(entries))  # noqa: B023 - called at once

    def close(self) -> None:
        try:
            self.state.acks.flush()
        except Exception as error:
            self.logger.warning("Could not write acks on close (they run again): %s", error)
        self.settings.on_close()

    # -- handing out ----------------------------------------------------------------------

    def _hand_out(self) -> StreamMessageProxy | None:
        """The next batch of some partition, or None. A hand-out that fails half-way (Redis
        unreachable) is undone, so the partition stays as it was."""
        while True:
            now = time.monotonic()
            with self.state.lock:
                if self.state.in_flight >= self.prefetch:
                    return None
                taken = self._take(now)
                if taken is None:
                    return None
                partition, batch, transient = taken
                lone = batch[0].starts > 0
                self.state.in_flight += 1
                self.state.lone_busy = self.state.lone_busy or lone
            proxy: StreamMessageProxy | None = None
            try:
                proxy = self._prepare(partition, batch, lone, transient)
            finally:
                if proxy is None and batch:
                    # Not handed out (failed, or dead-lettered at once): settle it here.
                    self._release_slot(lone)
            if proxy is not None:
                return proxy

    def _take(self, now: float) -> tuple[int, list[StreamEntry], int] | None:
        """A batch of the next partition (round robin) that has one, with the transient
        failures of its keys so far (call with the lock)."""
        partitions = list(self.state.partitions.values())
        count = len(partitions)
        lone_free = not self.state.lone_busy
        for i in range(count):
            p = partitions[(self._turn + i) % count]
            if not p.usable(now):
                continue
            batch = p.take(now, self.settings.batch_limit, lone_free=lone_free)
            if batch is not None:
                self._turn = (self._turn + i + 1) % count
                return p.partition, batch, p.transient_failures(batch)
        return None

    def _prepare(
        self, partition: int, batch: list[StreamEntry], lone: bool, transient: int
    ) -> StreamMessageProxy | None:
        """Dead-letter what cannot run, record the start of redelivered entries, and make
        the proxy; None when nothing is left to run. Undoes the hand-out on an error."""
        head = batch[0]
        if head.message is not None and not any(e.suspect for e in batch):
            proxy = self._proxy(partition, batch, lone, transient)
            metrics.partition_metrics(partition).dequeued(self.queue_name).inc(len(batch))
            return proxy
        done: list[StreamEntry] = []
        marked: list[StreamEntry] = []
        try:
            if head.message is None:
                held = self._dead_letter(partition, head, REASON_DECODE_ERROR, head.decode_error, "", 1)
                done = [head] if held else []
                self._finish_take(partition, batch, done, lost=not held)
                return None
            capped = [e for e in batch if e.suspect and e.starts + 1 >= self.settings.max_deliveries(e)]
            if capped:
                held = True
                for entry in capped:
                    error = f"delivered {entry.starts + 1} times; the process running it died each time"
                    held = held and self._dead_letter(
                        partition, entry, REASON_CRASHED_WORKER, error, "", entry.attempts + 1
                    )
                    if held:
                        done.append(entry)
                self._finish_take(partition, batch, done, lost=not held)
                return None
            marked = [e for e in batch if e.suspect]
            if marked:
                for entry in marked:
                    entry.starts += 1
                if not self.store.mark_started(self.queue_name, partition, marked):
                    self._finish_take(partition, batch, [], lost=True)
                    return None
            proxy = self._proxy(partition, batch, lone, transient)
            proxy.marked = {e.stream_id for e in marked}
            metrics.partition_metrics(partition).dequeued(self.queue_name).inc(len(batch))
            return proxy
        except BaseException:
            for entry in marked:
                entry.starts -= 1
            self._finish_take(partition, batch, done)
            raise

    def _finish_take(
        self, partition: int, batch: list[StreamEntry], done: list[StreamEntry], *, lost: bool = False
    ) -> None:
        """Settle a batch that was taken but is not handed out: ``done`` entries are gone
        (dead-lettered), the others go back to the heads of their keys."""
        with self.state.lock:
            p = self.state.partitions.get(partition)
            if p is not None:
                p.settle(done=done, back=[e for e in batch if e not in done])
                if lost:
                    self.state.lose(partition)

    def _release_slot(self, lone: bool) -> None:
        with self.state.lock:
            self.state.in_flight -= 1
            if lone:
                self.state.lone_busy = False
        self.state.wakeup.set()

    def _proxy(
        self, partition: int, batch: list[StreamEntry], lone: bool, transient: int
    ) -> StreamMessageProxy:
        head = batch[0]
        assert head.message is not None
        if self.settings.batch_limit(head) is not None:
            messages = [self._with_stream_options(e, partition) for e in batch]
            message: Message[Any] = head.message.copy(
                args=(messages,), kwargs={}, options={"batch": len(batch), "partition": partition}
            )
        else:
            message = self._with_stream_options(head, partition)
        proxy = StreamMessageProxy(
            message, partition=partition, entries=batch, transient_failures=transient, lone=lone
        )
        proxy.still_owned = lambda: self._owned(partition)
        return proxy

    def _owned(self, partition: int) -> bool:
        p = self.state.partitions.get(partition)
        return p is not None and partition not in self.state.lost and p.valid_until > time.monotonic()

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

    # -- outcomes -------------------------------------------------------------------------

    def _retry(self, message: StreamMessageProxy) -> None:
        """Record the failure durably (lease-fenced), then hold its keys back."""
        delay_ms = message.retry_delay_ms or 0
        updates = [
            (e, e.attempts + (1 if message.count_attempt else 0), e.starts - (e.stream_id in message.marked))
            for e in message.entries
        ]
        held = self.store.retry(
            self.queue_name,
            message.partition,
            [_with_counts(e, attempts, starts) for e, attempts, starts in updates],
            delay_ms,
        )
        if held:
            for entry, attempts, starts in updates:
                entry.attempts, entry.starts = attempts, starts
        now = time.monotonic()
        self._settle(
            message,
            lambda p: p.retry_later(
                message.entries, now, delay_ms / 1000, transient=not message.count_attempt
            ),
            lost=not held,
        )

    def _dead_letter(
        self, partition: int, entry: StreamEntry, reason: str, error: str, traceback: str, attempts: int
    ) -> bool:
        """Dead-letter ``entry``; False when the lease is lost (it stays pending)."""
        located = entry.message is not None and entry.message.options.get("locate")
        dead_id = self.store.dead_letter(
            self.queue_name,
            partition,
            entry,
            reason=reason,
            error=error,
            traceback=traceback,
            attempts=attempts,
            located=where_field(entry.message.message_id) if located and entry.message else b"",
        )
        if dead_id is None:
            self.logger.warning(
                "Lease of %s partition %d lost; %s stays pending.",
                self.queue_name,
                partition,
                entry.stream_id,
            )
            return False
        if dead_id:  # "" : an earlier run of this step did it (its reply was lost)
            metrics.dead_lettered(partition, reason)
            self.logger.warning(
                "Dead-lettered message %s (%s partition %d, entry %s): %s %s",
                entry.message.message_id if entry.message is not None else "?",
                self.queue_name,
                partition,
                entry.stream_id,
                reason,
                error[:200],
            )
        return True

    def _settle(
        self, message: StreamMessageProxy, transition: Callable[[PartitionState], None], *, lost: bool = False
    ) -> None:
        """Apply a finished batch's transition to its partition and free its slot."""
        with self.state.lock:
            p = self.state.partitions.get(message.partition)
            if p is not None:
                transition(p)
                if lost:
                    self.state.lose(message.partition)
                elif message.partition in self.state.lost:
                    self.state.drop_lost()
            self.state.in_flight -= 1
            if message.lone:
                self.state.lone_busy = False
        self.state.wakeup.set()

    # -- reading --------------------------------------------------------------------------


def _with_counts(entry: StreamEntry, attempts: int, starts: int) -> StreamEntry:
    """A copy of ``entry`` carrying the counts to record (the entry changes only once they are)."""
    copy = StreamEntry(entry.stream_id, entry.data, entry.seq, entry.key, entry.order)
    copy.attempts, copy.starts = attempts, starts
    return copy
