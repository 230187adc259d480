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
from typing import TYPE_CHECKING

import redis
from dramatiq.logging import get_logger

from brokers.consumer import PartitionState

if TYPE_CHECKING:
    from brokers.broker import RedisStreamsBroker
    from brokers.consumer import QueueState

#: Part of the lease TTL a holder trusts its lease for (the rest is a safety margin).
LEASE_TRUST = 0.8


class LeaseCoordinator:
    """Keeps this process's membership and partition leases, on a heartbeat thread."""

    def __init__(self, broker: RedisStreamsBroker) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.token = broker.consumer_name
        self.queues: dict[str, QueueState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, state: QueueState) -> None:
        """Lease partitions of ``state``'s queue from now on (starts the heartbeat)."""
        with self._lock:
            self.queues[state.queue_name] = state
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name="stream-leases", daemon=True)
        try:
            self.tick()
        except redis.RedisError as error:
            self.logger.warning("First lease round failed: %s", error)
        if start and self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat, release idle leases and leave the membership."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            for queue_name in list(self.queues):
                self.release_idle(queue_name, everything=True)
            self.broker.scripts.heartbeat(
                keys=[self.broker.members_key], args=[self.token, self.broker.lease_ttl_ms, "leave"]
            )
        except redis.RedisError as error:
            self.logger.warning("Could not leave the membership cleanly: %s", error)

    def _run(self) -> None:
        interval = self.broker.heartbeat_interval_ms / 1000
        while not self._stop.wait(interval):
            try:
                self.tick()
            except redis.RedisError as error:
                self.logger.warning("Lease heartbeat failed: %s", error)
            except Exception:
                self.logger.exception("Lease heartbeat crashed; retrying.")

    def tick(self) -> None:
        """One heartbeat: refresh membership, then acquire, renew or release leases."""
        broker = self.broker
        members = sorted(
            m.decode() if isinstance(m, bytes) else str(m)
            for m in broker.scripts.heartbeat(
                keys=[broker.members_key], args=[self.token, broker.lease_ttl_ms, ""]
            )
        )
        if self.token not in members:
            members = sorted([*members, self.token])
        for queue_name, state in list(self.queues.items()):
            assigned = {p for p in range(broker.partitions) if members[p % len(members)] == self.token}
            with state.lock:
                owned = set(state.partitions)
                for p in owned - assigned:
                    state.partitions[p].draining = True
            self.release_idle(queue_name)
            with state.lock:
                wanted = sorted(assigned | {p for p in owned if p in state.partitions})
            sent_at = time.monotonic()
            results = broker.lease_many(queue_name, wanted, "acquire")
            valid_until = sent_at + broker.lease_ttl_ms / 1000 * LEASE_TRUST
            acquired = False
            with state.lock:
                for p, held in zip(wanted, results, strict=True):
                    current = state.partitions.get(p)
                    if not held:
                        if current is not None:
                            self.logger.warning("Lost the lease of %s partition %d.", queue_name, p)
                            current.valid_until = 0.0
                            current.buffer.clear()
                            if not state.is_busy(p):
                                del state.partitions[p]
                        continue
                    if current is None:
                        state.partitions[p] = PartitionState(partition=p, valid_until=valid_until)
                        acquired = True
                    else:
                        current.valid_until = valid_until
            if acquired:
                state.wakeup.set()

    def release_idle(self, queue_name: str, *, everything: bool = False) -> None:
        """Release the leases of partitions that are draining (or all, if ``everything``)
        and have nothing in flight."""
        state = self.queues.get(queue_name)
        if state is None:
            return
        with state.lock:
            released = [
                p for p, s in state.partitions.items() if (everything or s.draining) and not state.is_busy(p)
            ]
            for p in released:
                del state.partitions[p]
        if released:
            self.broker.lease_many(queue_name, released, "release")
