"""The project's broker, one :class:`brokers.RedisStreamsBroker` built from settings, and
the names that ingress and the workers agree on (queue, actor)."""

from __future__ import annotations

from functools import cache

import dramatiq
from django.conf import settings

from brokers import RedisStreamsBroker
from delivery.sequences import sequence_floor
from delivery.worker_middleware import DbConnections

#: The queue the persist actor consumes.
MESSAGES_QUEUE = "messages"

#: The persist actor's name (see ``delivery.actors``).
PERSIST_ACTOR = "persist_messages"


@cache
def get_broker() -> RedisStreamsBroker:
    """The process's broker (also installed as Dramatiq's global broker)."""
    broker = RedisStreamsBroker(
        settings.REDIS_URL,
        partitions=settings.STREAM_PARTITIONS,
        namespace=settings.STREAM_NAMESPACE,
        poll_interval_ms=settings.STREAM_POLL_INTERVAL_MS,
        fetch_count=max(10, settings.STREAM_BATCH_SIZE),
        idempotency_grace_ms=settings.IDEMPOTENCY_GRACE_MS,
        sequence_floor=sequence_floor,
    )
    broker.add_middleware(DbConnections())
    dramatiq.set_broker(broker)
    return broker
