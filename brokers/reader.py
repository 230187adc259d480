"""Keeping the look-ahead of leased partitions filled: claim what earlier owners left
(oldest first), read new entries (fenced by the lease), wait with one blocking read when
idle. What to do next is :func:`brokers.scheduler.plan`'s decision; Redis is reached
through :class:`brokers.store.StreamStore`; entries go to their
:class:`brokers.partition.PartitionState`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dramatiq.errors import BrokerConnectionError

from brokers import metrics
from brokers.ownership import QueueState
from brokers.partition import PartitionState
from brokers.scheduler import PartitionView, plan
from brokers.store import StreamStore

#: Entries read (or claimed) per partition and round trip, at most. A partition is read
#: again once fewer than this many of its entries can run (not held back by a retry).
DEFAULT_FETCH_COUNT = 25

#: Longest pause, in milliseconds, between two polls of idle partitions while messages
#: are in flight (or on a Redis Cluster, where one blocking wait cannot cover them all).
DEFAULT_IDLE_POLL_MAX_MS = 20

#: Longest pause, in milliseconds, between two polls of idle partitions when nothing is in
#: flight and no blocking wait can cover them (a Redis Cluster): what an idle worker costs
#: against how soon it sees a new message.
DEFAULT_IDLE_POLL_UNBLOCKED_MS = 100

#: Longest blocking wait, in milliseconds, before delayed messages are checked for.
DEFAULT_DELAY_CHECK_MS = 250

#: Pause, in seconds, before polling a partition again after a read that returned some
#: entries but not a full page. A message finishing sooner wakes the consumer, which then
#: waits in one blocking read: at sparse arrivals about one read per message, not two.
FIRST_POLL_GAP_S = 0.005


@dataclass(frozen=True, slots=True)
class ReaderSettings:
    """How the reader polls and waits."""

    fetch_count: int = DEFAULT_FETCH_COUNT
    poll_interval_ms: int = 5000
    idle_poll_max_ms: int = DEFAULT_IDLE_POLL_MAX_MS
    delay_check_ms: int = DEFAULT_DELAY_CHECK_MS
    #: One blocking wait may cover every partition (single node, not a cluster).
    can_block: bool = True


class PartitionReader:
    """Fills the look-ahead of one queue's leased partitions (see the module docstring)."""

    def __init__(self, store: StreamStore, state: QueueState, settings: ReaderSettings) -> None:
        self.store = store
        self.state = state
        self.settings = settings
        self.queue_name = state.queue_name

    def step(self, now: float, deadline: float) -> None:
        """Claim and read what is due (one round trip), or wait for entries or a wake-up."""
        with self.state.lock:
            views = self._views(now)
            busy = self.state.in_flight > 0
        step = plan(
            views,
            now=now,
            deadline=deadline,
            busy=busy,
            can_block=self.settings.can_block,
            poll_interval_s=self.settings.poll_interval_ms / 1000,
        )
        if step.claim or step.read:
            self._fetch(step.claim, step.read)
        elif step.block:
            self._wait(step.block, step.block_ms)
        else:
            self.state.wakeup.wait(step.sleep_s)
            self.state.wakeup.clear()

    def _views(self, now: float) -> list[PartitionView]:
        views = []
        for p in self.state.partitions.values():
            if not p.usable(now):
                continue
            # Read more only when what can run runs low, and memory allows.
            room = p.room() > 0 and p.runnable() < self.settings.fetch_count
            # A claim starting over (the partition was lost and leased again) would hand
            # back this process's own unfinished entries: it waits until they are done.
            starting_over = p.claim_cursor == "-"
            claimable = (
                not p.caught_up
                and room
                and not (starting_over and (p.in_flight or self.state.acks.pending(p.partition)))
            )
            views.append(
                PartitionView(
                    partition=p.partition,
                    claimable=claimable,
                    readable=p.caught_up and room,
                    next_read_at=p.next_read_at,
                    next_wake=p.next_wake(),
                    next_due=p.next_due_at,
                )
            )
        return views

    def _fetch(self, claim: tuple[int, ...], read: tuple[int, ...]) -> None:
        count = self.settings.fetch_count
        with self.state.lock:
            partitions = self.state.partitions
            claims = {n: (partitions[n].claim_cursor, min(count, partitions[n].room())) for n in claim}
            reads = {n: min(count, partitions[n].room()) for n in read}
        try:
            claimed, got = self.store.fetch(self.queue_name, claims, reads)
        except BrokerConnectionError:
            with self.state.lock:
                for n in [*claims, *reads]:
                    if n in self.state.partitions:
                        self.state.partitions[n].read_again_from_redis()
            raise
        now = time.monotonic()
        with self.state.lock:
            for n, claim_reply in claimed.items():
                p = self.state.partitions.get(n)
                if p is None:
                    continue
                if claim_reply.lost:
                    self.state.lose(n)
                    continue
                p.add(claim_reply.entries, now)
                p.claim_cursor = claim_reply.cursor or p.claim_cursor
                if claim_reply.done:
                    p.caught_up = True
                    p.next_read_at = 0.0
            for n, read_reply in got.items():
                p = self.state.partitions.get(n)
                if p is None:
                    continue
                if read_reply.lost:
                    self.state.lose(n)
                    continue
                p.add(read_reply.entries, now)
                p.last_id = read_reply.last_id or p.last_id
                self._schedule(p, now, len(read_reply.entries), reads[n], read_reply.next_due_ms)

    def _schedule(self, p: PartitionState, now: float, got: int, asked: int, next_due_ms: int) -> None:
        """When to read ``p`` again after a read that returned ``got`` of ``asked``."""
        check_s = self.settings.delay_check_ms / 1000
        p.next_due_at = now + (min(next_due_ms / 1000, check_s) if next_due_ms >= 0 else check_s)
        if got >= asked:
            p.read_gap = 0.0  # a full page: more is waiting
        elif got:
            p.read_gap = FIRST_POLL_GAP_S
        else:
            longest = self.settings.idle_poll_max_ms
            if not self.settings.can_block and self.state.in_flight == 0:
                longest = max(longest, DEFAULT_IDLE_POLL_UNBLOCKED_MS)
            p.read_gap = min(max(p.read_gap * 2, 0.001), longest / 1000)
        p.next_read_at = now + p.read_gap
        if p.room() == 0:
            metrics.LOOKAHEAD_FULL.labels(str(p.partition)).inc()
        metrics.partition_gauges(p.partition, lookahead=p.held, blocked_keys=p.blocked_keys())

    def _wait(self, partitions: tuple[int, ...], block_ms: int) -> None:
        """Wait (blocking) until a partition has new entries; acks go ahead of the wait."""
        with self.state.lock:
            last_ids = {n: self.state.partitions[n].last_id for n in partitions if n in self.state.partitions}
        with self.state.acks.to_send() as acks:
            woke = self.store.wait(self.queue_name, last_ids, block_ms, acks)
        with self.state.lock:
            for n in woke:
                p = self.state.partitions.get(n)
                if p is not None:
                    p.next_read_at = 0.0
                    p.read_gap = 0.0
