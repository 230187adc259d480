"""What this process owns of one queue: the partitions it leases, their deferred acks,
and the counters the consumer's prefetch and the poison cap need.

One :class:`QueueState` per queue is shared by the consumers Dramatiq restarts after a
connection error and by the lease coordinator; ``lock`` guards it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from brokers.acks import DeferredAcks
from brokers.partition import PartitionState
from brokers.store import StreamStore

#: Builds the state of a newly leased partition: (partition, valid until) → state.
NewPartition = Callable[[int, float], PartitionState]


class QueueState:
    """The partitions of one queue leased by this process (see the module docstring)."""

    def __init__(self, queue_name: str, store: StreamStore, new_partition: NewPartition) -> None:
        self.queue_name = queue_name
        self.lock = threading.Lock()
        #: Set when something may have become ready: a batch finished, acks were written,
        #: a lease was acquired.
        self.wakeup = threading.Event()
        self.partitions: dict[int, PartitionState] = {}
        self.new_partition = new_partition
        #: Batches handed out and not finished, over all partitions.
        self.in_flight = 0
        #: A batch whose entry's earlier runs never finished is in flight (one at a time,
        #: so a crash is blamed on it alone).
        self.lone_busy = False
        self.acks = DeferredAcks(queue_name, store, self.wakeup)
        #: Partitions whose lease was lost and whose in-flight work is still finishing.
        self.lost: set[int] = set()

    def is_idle(self, partition: int) -> bool:
        """Nothing in flight and every ack written (call with the lock)."""
        state = self.partitions.get(partition)
        return (state is None or state.in_flight == 0) and not self.acks.pending(partition)

    def lose(self, partition: int) -> None:
        """The lease is gone: hand out nothing more; entries not in flight stay pending in
        Redis for the next owner (call with the lock)."""
        state = self.partitions.get(partition)
        if state is None:
            return
        state.valid_until = 0.0
        state.forget_waiting()
        self.lost.add(partition)
        self.drop_lost()

    def drop_lost(self) -> None:
        """Forget lost partitions whose work has finished (call with the lock)."""
        for partition in list(self.lost):
            if self.is_idle(partition):
                self.lost.discard(partition)
                self.partitions.pop(partition, None)

    def acquired(self, partition: int, valid_until: float) -> bool:
        """The lease is held until ``valid_until``; True when it is newly ours (call with
        the lock). A partition lost and leased again starts over: claim what is pending."""
        state = self.partitions.get(partition)
        if state is not None and partition not in self.lost:
            state.valid_until = valid_until
            return False
        fresh = self.new_partition(partition, valid_until)
        if state is not None:
            # Still finishing work from before it was lost: keep those counts, so the
            # claim that starts over waits until that work is done and acked.
            fresh.in_flight = state.in_flight
            fresh.held = state.held
            fresh.running = state.running
        self.lost.discard(partition)
        self.partitions[partition] = fresh
        return True
