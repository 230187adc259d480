"""The project's broker: one :class:`brokers.RedisStreamsBroker` built from settings."""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import dramatiq
from django.conf import settings
from django.db import connection
from django.db.models import Max
from dramatiq.middleware import Middleware

from brokers import RedisStreamsBroker

#: The queue the persist actor consumes.
MESSAGES_QUEUE = "messages"


def sequence_floor(conversation_id: str) -> int:
    """The last ``seq`` used in a conversation, for a counter Redis no longer has.

    Redis loses counters with its data (a restart without persistence): numbering then
    resumes after the highest ``seq`` the database knows, persisted or dead-lettered.
    """
    from delivery.models import DeadLetter, Message

    persisted = Message.objects.filter(conversation_id=conversation_id).aggregate(m=Max("seq"))["m"]
    dead = DeadLetter.objects.filter(conversation_id=conversation_id).aggregate(m=Max("seq"))["m"]
    return max(persisted or 0, dead or 0)


class DbConnections(Middleware):
    """Database connection hygiene for worker threads (each holds its own connection).

    After a message, a connection that saw an error is checked and closed if broken
    (the next try reconnects: a database restart costs one transient failure, never
    "connection already closed" forever), and one past ``CONN_MAX_AGE`` is closed. A
    healthy connection is not pinged before every message, unlike a web request's.
    A stopping worker thread closes its connection.
    """

    def after_process_message(self, broker: dramatiq.Broker, message: Any, **kwargs: Any) -> None:
        if connection.connection is None:
            return
        if connection.errors_occurred or not connection.get_autocommit():
            connection.close_if_unusable_or_obsolete()
        elif connection.close_at is not None and time.monotonic() >= connection.close_at:
            connection.close()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        connection.close()


@cache
def get_broker() -> RedisStreamsBroker:
    """The process's broker (also installed as Dramatiq's global broker)."""
    broker = RedisStreamsBroker(
        settings.REDIS_URL,
        partitions=settings.STREAM_PARTITIONS,
        namespace=settings.STREAM_NAMESPACE,
        poll_interval_ms=settings.STREAM_POLL_INTERVAL_MS,
        fetch_count=max(10, settings.STREAM_BATCH_SIZE),
        idempotency_ttl_ms=settings.IDEMPOTENCY_TTL_MS,
        sequence_floor=sequence_floor,
    )
    broker.add_middleware(DbConnections())
    dramatiq.set_broker(broker)
    return broker
