"""The broker's errors. Redis errors are translated into Dramatiq's where they enter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from dramatiq.errors import BrokerError, ConnectionClosed

#: What redis-py raises when Redis cannot be reached or does not answer in time (the two
#: are siblings under ``RedisError``: catching one does not catch the other), and what a
#: Redis Cluster answers while it fails over: no master for a slot yet (``CLUSTERDOWN``,
#: ``MASTERDOWN``, a slot not covered), a multi-key step to retry (``TRYAGAIN``), a write
#: sent to a former master that came back as a replica (``READONLY``). All pass: retry.
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.ReadOnlyError,
)


class StreamsBrokerError(BrokerError):
    """Base class of the errors this broker raises itself."""


class NotReplicated(StreamsBrokerError):
    """An enqueue reached fewer replicas than ``min_replicas_ack`` asked for in time. It is
    on the master and may or may not survive a failover: retry it with the same
    idempotency key (a repeat is answered with the first message, never enqueued twice)."""


class DeadLetterNotFound(StreamsBrokerError):
    """The dead letter named does not exist (any more) in its dead-letter stream."""


@contextmanager
def redis_unreachable_as_connection_closed() -> Iterator[None]:
    """Translate "Redis unreachable" (refused, reset, timed out) into Dramatiq's
    ``ConnectionClosed``, which workers retry and callers catch as ``BrokerConnectionError``."""
    try:
        yield
    except UNREACHABLE as error:
        raise ConnectionClosed(error) from None
