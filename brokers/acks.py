"""Deferred acks: a processed message frees its key at once; its ack is written later.

Order is about *processing*, so the next message of a key may start before the previous
one's ack reaches Redis. The ids wait here until the acker thread writes them (many
partitions per round trip) or the consumer sends them ahead of its blocking wait. A crash
loses only unwritten acks, whose messages then run again, in order (at least once).
Nothing that re-reads pending entries (a claim starting over, a lease release) runs for a
partition before its acks are written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dramatiq.errors import BrokerConnectionError
from dramatiq.logging import get_logger

from brokers.store import Acks, Done, StreamStore

#: How long the acker thread lets deferred acks gather before writing them, in seconds.
#: A crash loses at most this much more acks (their messages run again, in order).
ACK_LINGER_S = 0.005

#: Pause after a failed write before the acker tries again, in seconds.
ACK_RETRY_S = 0.5


class DeferredAcks:
    """The acks of one queue not yet written to Redis, and the thread that writes them."""

    def __init__(self, queue_name: str, store: StreamStore, wakeup: threading.Event) -> None:
        self.queue_name = queue_name
        self.store = store
        #: Set after acks were written (a partition waiting for them may go on).
        self.wakeup = wakeup
        self.logger = get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._deferred: Acks = {}
        self._ready = threading.Event()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, partition: int, done: Done) -> None:
        """Defer the acks of processed entries (and what goes with them)."""
        with self._lock:
            deferred = self._deferred.get(partition)
            if deferred is None:
                deferred = self._deferred[partition] = Done()
            deferred.ids += done.ids
            deferred.located += done.located
            deferred.records += done.records
        self._ready.set()

    def pending(self, partition: int) -> bool:
        """Whether ``partition`` has acks not yet written."""
        return partition in self._deferred

    def flush(self) -> None:
        """Write every deferred ack now (one round trip on a single node)."""
        with self._writing:
            acks = self._taken()
            if not acks:
                return
            self.store.ack(self.queue_name, acks)
            self._written(acks)
        self.wakeup.set()

    @contextmanager
    def to_send(self) -> Iterator[Acks | None]:
        """The deferred acks, for a caller that sends them in a round trip of its own (the
        consumer, ahead of its blocking wait); None when there are none or another thread
        is writing them. They count as written when the block exits normally."""
        if not self._writing.acquire(blocking=False):
            yield None
            return
        try:
            acks = self._taken()
            if not acks:
                yield None
                return
            yield acks
            self._written(acks)
        finally:
            self._writing.release()

    def start(self) -> None:
        """Start the thread that writes deferred acks (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"stream-acker-{self.queue_name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the acker after writing what is left (what cannot be written runs again)."""
        self._stop.set()
        self._ready.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.flush()
        except BrokerConnectionError as error:
            self.logger.warning(
                "Could not write the last acks of %s (they run again): %s", self.queue_name, error
            )

    def _taken(self) -> Acks:
        with self._lock:
            return {p: Done(list(d.ids), list(d.located), list(d.records)) for p, d in self._deferred.items()}

    def _written(self, acks: Acks) -> None:
        """Drop what was written (more may have been added meanwhile)."""
        with self._lock:
            for p, written in acks.items():
                deferred = self._deferred.get(p)
                if deferred is None:
                    continue
                deferred.ids = deferred.ids[len(written.ids) :]
                deferred.located = deferred.located[len(written.located) :]
                deferred.records = deferred.records[len(written.records) :]
                if not deferred.ids:
                    del self._deferred[p]

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._ready.wait(0.5):
                # Linger: an idle consumer sends the acks ahead of its next blocking wait
                # (no round trip of their own); a busy one gets more partitions per write.
                self._stop.wait(ACK_LINGER_S)
            self._ready.clear()
            try:
                self.flush()
            except BrokerConnectionError as error:
                self.logger.warning("Writing acks of %s failed (retrying): %s", self.queue_name, error)
                self._stop.wait(ACK_RETRY_S)
