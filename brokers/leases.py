"""Partition leases: which live worker process may hand out which partition's messages.

Each consuming process registers itself in a membership set with a TTL and, on every
heartbeat, computes the same assignment as every other process (partition ``p`` goes
to the ``p % n``-th live member, members sorted by name). It acquires or renews the
leases of its share and releases, once idle, the ones assigned elsewhere. A lease is
a Redis key with a TTL; a process trusts its lease only until the TTL measured from
*before* the renewal was sent, minus a margin, so two processes never both believe
they hold one. After a crash the dead member and its leases expire together, and the
survivors take its partitions over within one lease TTL plus one heartbeat.
"""

from __future__ import annotations

import threading
import time

from dramatiq.errors import BrokerConnectionError
from dramatiq.logging import get_logger

from brokers.ownership import QueueState
from brokers.records import StreamEntry
from brokers.store import StreamStore

#: Part of the lease TTL a holder trusts its lease for (the rest is a safety margin).
LEASE_TRUST = 0.8

#: Pause before trying again for partitions assigned here that their previous owner has
#: not released yet (it releases them as soon as its work in hand is done), in seconds.
TAKEOVER_RETRY_S = 0.1

#: How often the membership is read between heartbeats, in seconds: a process that joins
#: or leaves changes the assignment, and the others act on it within this time rather
#: than at their next heartbeat (a joining process gets its share within ~0.1 s plus the
#: previous owner's work in hand, not up to a whole heartbeat interval later).
MEMBERSHIP_CHECK_S = 0.1

#: How often partitions assigned elsewhere are checked for being idle (nothing in flight,
#: acks written) so that their leases are released at once, in seconds.
DRAIN_CHECK_S = 0.02


class LeaseCoordinator:
    """Keeps this process's membership and partition leases, on a heartbeat thread."""

    def __init__(
        self, store: StreamStore, *, partitions: int, lease_ttl_ms: int, heartbeat_interval_ms: int
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.partitions = partitions
        self.lease_ttl_ms = lease_ttl_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.queues: dict[str, QueueState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Some partitions assigned here are still held by their previous owner.
        self._short_of_share = False
        #: The live members the last heartbeat saw.
        self._members: list[str] = []
        #: Some partitions assigned elsewhere are still held here (work in hand).
        self._draining = False

    def watch(self, state: QueueState) -> None:
        """Lease partitions of ``state``'s queue from now on (starts the heartbeat)."""
        with self._lock:
            self.queues[state.queue_name] = state
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name="stream-leases", daemon=True)
        try:
            self.tick()
        except BrokerConnectionError as error:
            self.logger.warning("First lease round failed: %s", error)
        if start and self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat, release idle leases and leave the membership."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        try:
            for queue_name in list(self.queues):
                self.release_idle(queue_name, everything=True)
            self.store.heartbeat(self.lease_ttl_ms, leave=True)
        except BrokerConnectionError as error:
            self.logger.warning("Could not leave the membership cleanly: %s", error)

    def _run(self) -> None:
        interval = self.heartbeat_interval_ms / 1000
        next_beat = time.monotonic() + interval
        while not self._stop.wait(self._pause(next_beat)):
            due = time.monotonic() >= next_beat or self._short_of_share
            try:
                if self._draining:
                    self._release_draining()
                due = due or self._membership_changed()
                if due:
                    self.tick()
            except BrokerConnectionError as error:
                self.logger.warning("Lease heartbeat failed: %s", error)
            except Exception:
                self.logger.exception("Lease heartbeat crashed; retrying.")
            if due:
                now = time.monotonic()
                next_beat = now + (TAKEOVER_RETRY_S if self._short_of_share else interval)

    def _pause(self, next_beat: float) -> float:
        check = DRAIN_CHECK_S if self._draining else MEMBERSHIP_CHECK_S
        return min(check, max(0.0, next_beat - time.monotonic()))

    def _release_draining(self) -> None:
        """Release the partitions assigned elsewhere whose work in hand is done."""
        draining = False
        for queue_name, state in list(self.queues.items()):
            self.release_idle(queue_name)
            with state.lock:
                draining = draining or any(p.draining for p in state.partitions.values())
        self._draining = draining

    def _membership_changed(self) -> bool:
        """Whether a process joined or left since the last heartbeat (renews this one's
        membership too: the script that reads it also renews it)."""
        return self.store.heartbeat(self.lease_ttl_ms) != self._members

    def tick(self) -> None:
        """One heartbeat: refresh membership, then acquire, renew or release leases."""
        members = self.store.heartbeat(self.lease_ttl_ms)
        self._members = members
        token = self.store.consumer_name
        if token not in members:
            members = sorted([*members, token])
        short = draining = False
        for queue_name, state in list(self.queues.items()):
            assigned = {p for p in range(self.partitions) if members[p % len(members)] == token}
            with state.lock:
                for p, partition in state.partitions.items():
                    if p not in assigned:
                        partition.draining = True
            self.release_idle(queue_name)
            with state.lock:
                draining = draining or any(p.draining for p in state.partitions.values())
                wanted = sorted(assigned | {p for p in state.partitions if p not in state.lost})
            sent_at = time.monotonic()
            held = self.store.acquire(queue_name, wanted, self.lease_ttl_ms)
            valid_until = sent_at + self.lease_ttl_ms / 1000 * LEASE_TRUST
            acquired = False
            with state.lock:
                for p, ok in zip(wanted, held, strict=True):
                    if ok:
                        acquired = state.acquired(p, valid_until) or acquired
                    elif p in state.partitions:
                        self.logger.warning("Lost the lease of %s partition %d.", queue_name, p)
                        state.lose(p)
                    else:
                        short = short or p in assigned
                state.drop_lost()
            if acquired:
                state.wakeup.set()
        self._short_of_share = short
        self._draining = draining

    def release_idle(self, queue_name: str, *, everything: bool = False) -> None:
        """Release the leases of partitions that are draining (or all, if ``everything``)
        once nothing of theirs is in flight and their acks are written."""
        state = self.queues.get(queue_name)
        if state is None:
            return
        with state.lock:
            released: dict[int, list[StreamEntry]] = {}
            for p, partition in list(state.partitions.items()):
                if (everything or partition.draining) and p not in state.lost and state.is_idle(p):
                    released[p] = list(partition.waiting())
                    del state.partitions[p]
        if released:
            self.store.release(queue_name, released)
