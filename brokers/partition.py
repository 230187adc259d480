"""What this process holds of one leased partition, and the per-key gate (no Redis here).

Entries received from Redis wait here (still pending in Redis, so a new owner finds them)
until they are handed out. The gate keeps, per ordering key, at most one batch in flight
and hands a key's entries out strictly in stream order; keys are independent, so a key
waiting for a retry holds up only itself. With ``per_key=False`` every entry has the same
key and the partition is the unit of order (one batch in flight per partition).

Every transition is a method here, called under the queue's lock by the consumer and
the lease coordinator; the unit tests drive it without Redis.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from brokers.records import StreamEntry

#: Batch limit of an entry's actor; None when the actor takes one message at a time.
BatchLimit = Callable[[StreamEntry], "int | None"]


class PartitionState:
    """One partition this process leases: its lease validity, reading progress, and the
    entries it holds (waiting or in flight), gated per ordering key."""

    def __init__(self, partition: int, *, valid_until: float, lookahead: int, per_key: bool = True) -> None:
        self.partition = partition
        #: Monotonic time until which the lease is certainly still ours.
        self.valid_until = valid_until
        #: Still leased, but assigned elsewhere: hand out nothing more, release when idle.
        self.draining = False
        #: Most entries held at once (waiting plus in flight): what a blocked key may cost.
        self.lookahead = lookahead
        self.per_key = per_key
        #: Entries pending for earlier owners are all claimed; new entries may be read.
        self.caught_up = False
        #: Where the next claim of earlier owners' pending entries starts (exclusive).
        self.claim_cursor = "-"
        #: The last entry id known to be delivered: a blocking wait starts after it.
        self.last_id = "0-0"
        #: When to read (or claim) again; 0: at once.
        self.next_read_at = 0.0
        #: The pause before the next poll (grows while reads find nothing).
        self.read_gap = 0.0
        #: When delayed messages should be checked for next (monotonic), if known.
        self.next_due_at: float | None = None
        #: Batches handed out and not finished.
        self.in_flight = 0
        #: Entries held in memory: waiting plus in flight.
        self.held = 0
        #: Entries of the batches in flight.
        self.running = 0
        self._waiting: dict[str, deque[StreamEntry]] = {}
        #: (head order, key) of keys that may run now; stale items are skipped when popped.
        self._ready: list[tuple[tuple[int, int], str]] = []
        self._busy: set[str] = set()
        #: Keys backing off, and until when (monotonic seconds).
        self._blocked: dict[str, float] = {}
        self._wakeups: list[tuple[float, str]] = []
        #: Transient failures in a row per key (not durable: they use no retry budget).
        self._transient: dict[str, int] = {}

    # -- queries --------------------------------------------------------------------------

    def room(self) -> int:
        """How many more entries may be read into memory."""
        return max(0, self.lookahead - self.held)

    def runnable(self) -> int:
        """Entries waiting that no retry holds back: what this partition can still hand
        out before it needs more from Redis."""
        behind_retries = sum(len(self._waiting.get(key, ())) for key in self._blocked)
        return self.held - self.running - behind_retries

    def usable(self, now: float) -> bool:
        """Whether entries may be handed out (lease valid, not draining)."""
        return not self.draining and self.valid_until > now

    def blocked_keys(self) -> int:
        """Keys waiting for a retry (their later entries wait with them)."""
        return len(self._blocked)

    def next_wake(self) -> float | None:
        """When the earliest blocked key may run again (monotonic), if any is blocked."""
        while self._wakeups and self._blocked.get(self._wakeups[0][1]) != self._wakeups[0][0]:
            heapq.heappop(self._wakeups)
        return self._wakeups[0][0] if self._wakeups else None

    def has_ready(self, now: float) -> bool:
        """Whether :meth:`take` could hand something out now (cheap, may be optimistic)."""
        self._unblock(now)
        return bool(self._ready)

    def transient_failures(self, entries: Iterable[StreamEntry]) -> int:
        """Transient failures in a row of the keys of ``entries`` (the largest)."""
        if not self._transient:
            return 0
        return max((self._transient.get(self._gate(e), 0) for e in entries), default=0)

    def waiting(self) -> Iterator[StreamEntry]:
        """Every entry held and not in flight."""
        for entries in self._waiting.values():
            yield from entries

    # -- transitions ----------------------------------------------------------------------

    def add(self, entries: Iterable[StreamEntry], now: float) -> None:
        """Take entries received from Redis (in stream order)."""
        for entry in entries:
            key = self._gate(entry)
            queue = self._waiting.get(key)
            if queue is None:
                queue = self._waiting[key] = deque()
            queue.append(entry)
            self.held += 1
            if len(queue) == 1:
                if entry.retry_in_ms > 0 and key not in self._busy:
                    self._block(key, now + entry.retry_in_ms / 1000)
                else:
                    self._push(key)

    def take(self, now: float, limit_of: BatchLimit, *, lone_free: bool = True) -> list[StreamEntry] | None:
        """Hand out the next batch, or None when no key may run now.

        A batch holds entries of one actor: a key's next entries in order (up to the
        actor's batch limit), then those of other ready keys. An undecodable entry, an
        entry of a failed batch, or one redelivered after its consumer died goes alone.
        An entry whose earlier runs never finished needs the process's one "lone" slot
        (``lone_free``): it runs with no other such entry, so it alone is blamed.
        """
        self._unblock(now)
        skipped: list[tuple[tuple[int, int], str]] = []
        try:
            while self._ready:
                item = heapq.heappop(self._ready)
                head = self._head(item)
                if head is None:
                    continue
                if head.starts > 0 and not lone_free:
                    skipped.append(item)
                    continue
                batch = [self._pop(item[1])]
                limit = limit_of(head) if head.batchable else None
                if limit is not None:
                    self._fill(batch, item[1], limit)
                    while len(batch) < limit and self._ready:
                        other = heapq.heappop(self._ready)
                        other_head = self._head(other)
                        if other_head is None:
                            continue
                        if not self._joins(head, other_head):
                            skipped.append(other)
                            continue
                        batch.append(self._pop(other[1]))
                        self._fill(batch, other[1], limit)
                self.in_flight += 1
                self.running += len(batch)
                return batch
            return None
        finally:
            for item in skipped:
                heapq.heappush(self._ready, item)

    def finished(self, entries: list[StreamEntry]) -> None:
        """A batch succeeded or was dead-lettered: its keys go on."""
        self.settle(done=entries, back=[])

    def settle(self, *, done: list[StreamEntry], back: list[StreamEntry]) -> None:
        """A batch handed out is over: ``done`` entries are gone (acked or dead-lettered),
        ``back`` entries return to the heads of their keys; their keys go on."""
        self.in_flight -= 1
        self.running -= len(done) + len(back)
        self.held -= len(done)
        self._return(back)
        for key in self._keys(done + back):
            self._busy.discard(key)
            if done:
                self._transient.pop(key, None)
            self._push(key)

    def retry_later(self, entries: list[StreamEntry], now: float, delay_s: float, *, transient: bool) -> None:
        """A batch failed and runs again after ``delay_s``: its keys wait, others go on."""
        self.in_flight -= 1
        self.running -= len(entries)
        self._return(entries)
        for key in self._keys(entries):
            self._busy.discard(key)
            if transient:
                self._transient[key] = self._transient.get(key, 0) + 1
            else:
                self._transient.pop(key, None)
            self._block(key, now + delay_s)

    def isolate(self, entries: list[StreamEntry]) -> None:
        """A batch failed: each of its entries runs again at once, alone."""
        for entry in entries:
            entry.isolated = True
        self.put_back(entries)

    def put_back(self, entries: list[StreamEntry]) -> None:
        """Undo a hand-out (it could not start, or the worker stops before running it)."""
        self.settle(done=[], back=entries)

    def forget_waiting(self) -> list[StreamEntry]:
        """Drop every entry not in flight (the lease is gone: they stay pending in Redis
        for the next owner) and return them."""
        dropped = [entry for queue in self._waiting.values() for entry in queue]
        self.held -= len(dropped)
        self._waiting.clear()
        self._ready.clear()
        self._blocked.clear()
        self._wakeups.clear()
        return dropped

    def read_again_from_redis(self) -> None:
        """A read's outcome is unknown (its reply was lost): Redis may have delivered
        entries this process never received. Forget what waits and claim every pending
        entry again, oldest first, once nothing is in flight."""
        self.forget_waiting()
        self.caught_up = False
        self.claim_cursor = "-"
        self.next_read_at = 0.0

    # -- internals ------------------------------------------------------------------------

    def _gate(self, entry: StreamEntry) -> str:
        return entry.key if self.per_key else ""

    def _keys(self, entries: list[StreamEntry]) -> list[str]:
        return list(dict.fromkeys(self._gate(e) for e in entries))

    def _push(self, key: str) -> None:
        queue = self._waiting.get(key)
        if queue and key not in self._busy and key not in self._blocked:
            heapq.heappush(self._ready, (queue[0].order, key))

    def _head(self, item: tuple[tuple[int, int], str]) -> StreamEntry | None:
        """The key's head entry if ``item`` is still current, else None (a stale item)."""
        order, key = item
        queue = self._waiting.get(key)
        if not queue or key in self._busy or key in self._blocked or queue[0].order != order:
            return None
        return queue[0]

    def _pop(self, key: str) -> StreamEntry:
        queue = self._waiting[key]
        entry = queue.popleft()
        self._busy.add(key)
        if not queue:
            del self._waiting[key]
        return entry

    def _fill(self, batch: list[StreamEntry], key: str, limit: int) -> None:
        """Add ``key``'s next entries to ``batch`` while they may share it."""
        queue = self._waiting.get(key)
        while queue and len(batch) < limit and self._joins(batch[0], queue[0]):
            batch.append(queue.popleft())
        if queue is not None and not queue:
            del self._waiting[key]

    @staticmethod
    def _joins(head: StreamEntry, entry: StreamEntry) -> bool:
        assert head.message is not None
        return (
            entry.batchable
            and entry.starts == 0
            and entry.message is not None
            and entry.message.actor_name == head.message.actor_name
        )

    def _return(self, entries: list[StreamEntry]) -> None:
        """Put entries back at the heads of their keys, in their order."""
        for entry in reversed(entries):
            key = self._gate(entry)
            queue = self._waiting.get(key)
            if queue is None:
                queue = self._waiting[key] = deque()
            queue.appendleft(entry)

    def _block(self, key: str, until: float) -> None:
        self._blocked[key] = until
        heapq.heappush(self._wakeups, (until, key))

    def _unblock(self, now: float) -> None:
        while self._wakeups and self._wakeups[0][0] <= now:
            until, key = heapq.heappop(self._wakeups)
            if self._blocked.get(key) == until:
                del self._blocked[key]
                self._push(key)
