"""Dramatiq actors: thin "APIs" that take the stream's messages and call a service.

Importing this module declares the actors on the project's broker.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from django.conf import settings
from django.db import InterfaceError, OperationalError

from delivery import services
from delivery.broker import MESSAGES_QUEUE, PERSIST_ACTOR, get_broker
from delivery.errors import IdempotencyKeyConflict
from delivery.logging import current_correlation_id

logger = logging.getLogger(__name__)

#: First retry of a failing message, in milliseconds (then doubling, with jitter).
PERSIST_MIN_BACKOFF_MS = 500

#: Longest pause between two retries of a failing message, in milliseconds.
PERSIST_MAX_BACKOFF_MS = 30_000


@dramatiq.actor(
    broker=get_broker(),
    actor_name=PERSIST_ACTOR,
    queue_name=MESSAGES_QUEUE,
    batch_size=settings.STREAM_BATCH_SIZE,
    max_retries=settings.STREAM_MAX_RETRIES,
    min_backoff=PERSIST_MIN_BACKOFF_MS,
    max_backoff=PERSIST_MAX_BACKOFF_MS,
    # A database outage pauses the partition and uses up no retry budget.
    transient_exceptions=(OperationalError, InterfaceError),
    throws=(IdempotencyKeyConflict,),
)
def persist_messages(messages: list[dramatiq.Message[Any]]) -> None:
    """Persist consecutive messages of one partition in one transaction, in ``seq`` order."""
    envelopes = [{**m.args[0], "seq": m.options["seq"]} for m in messages]
    outcome = services.messages_persist(envelopes=envelopes)
    for m, envelope in zip(messages, envelopes, strict=True):
        token = current_correlation_id.set(envelope.get("correlation_id") or None)
        try:
            logger.info(
                "Persisted message %s (seq %s)",
                m.message_id,
                envelope["seq"],
                extra={
                    "message_id": m.message_id,
                    "conversation_id": envelope["conversation_id"],
                    "partition": m.options.get("partition"),
                    "attempt": int(m.options.get("retries", 0)) + 1,
                },
            )
        finally:
            current_correlation_id.reset(token)
    if outcome.duplicates:
        logger.info("%d of %d messages were already persisted", outcome.duplicates, len(messages))
