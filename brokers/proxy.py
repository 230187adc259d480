"""A message (or a batch) in flight, and the outcome the retry middleware gives it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import Middleware, SkipMessage

from brokers.records import StreamEntry


class StreamMessageProxy(MessageProxy):
    """A message, or a batch of messages of one partition (one or more keys), in flight.

    :class:`brokers.InPlaceRetries` records the outcome of a failure here (retry in place,
    split the batch, or dead-letter); the consumer carries it out on ``ack``/``nack``.
    """

    def __init__(
        self,
        message: Message[Any],
        *,
        partition: int,
        entries: list[StreamEntry],
        transient_failures: int = 0,
        lone: bool = False,
    ) -> None:
        super().__init__(message)
        self.partition = partition
        self.entries = entries
        #: Failures so far of the entry (durable; a batch that fails is split first).
        self.attempts = entries[0].attempts
        #: Transient failures in a row of its keys (not durable).
        self.transient_failures = transient_failures
        #: Holds the process's "lone" slot: its entry's earlier runs never finished.
        self.lone = lone
        #: Entries whose start this run recorded durably (redelivered ones).
        self.marked: set[str] = set()
        self.handed_out_at = time.monotonic()
        self.error = ""
        self.traceback = ""
        self.dead_letter_reason: str | None = None
        self.retry_delay_ms: int | None = None
        self.count_attempt = False
        self.split = False
        #: Whether this process still holds the partition's lease (set by the consumer).
        self.still_owned: Callable[[], bool] = lambda: True
        #: Not run: the lease was lost between hand-out and start (see ``LeaseGuard``).
        self.lease_lost = False

    def __str__(self) -> str:
        if len(self.entries) > 1:
            return (
                f"{self.actor_name}[batch of {len(self.entries)}, partition {self.partition}, "
                f"entries {self.entries[0].stream_id}..{self.entries[-1].stream_id}]"
            )
        head = self.entries[0].stream_id
        return f"{self.actor_name}[{self.message_id}, partition {self.partition}, entry {head}]"

    def retry_in_place(self, *, delay_ms: int, count_attempt: bool) -> None:
        """Keep the entries pending at the head of their keys and run them again later."""
        self.retry_delay_ms = delay_ms
        self.count_attempt = count_attempt

    def split_batch(self) -> None:
        """Run this batch's entries again at once, each alone."""
        self.split = True

    def fail_with(self, reason: str) -> None:
        """Mark the message for the dead-letter stream, with ``reason``."""
        self.dead_letter_reason = reason
        self.fail()


class LeaseGuard(Middleware):
    """Skips a message whose partition's lease was lost after it was handed out.

    Handed-out messages wait in the worker's queue; a process paused past its lease (a
    stop-the-world pause, SIGSTOP) wakes up with some still there, while the partition's
    new owner runs the same keys. They are not run: their entries stay pending, and the
    new owner runs them in order.
    """

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if isinstance(message, StreamMessageProxy) and not message.still_owned():
            message.lease_lost = True
            raise SkipMessage(f"the lease of partition {message.partition} was lost")
