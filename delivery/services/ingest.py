"""Ingress: a message is acknowledged after one atomic, idempotent enqueue."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import dramatiq
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import InterfaceError, OperationalError, connection
from dramatiq.errors import BrokerConnectionError
from uuid_utils.compat import uuid7

from delivery import metrics, sql
from delivery.broker import (
    MESSAGES_QUEUE,
    PENDING_MESSAGE_TTL_MS,
    PERSIST_ACTOR,
    get_broker,
    pending_message_key,
)
from delivery.errors import IdempotencyKeyReused, NotFound, PayloadTooLarge, ServiceUnavailable
from delivery.idempotency import IngressKey, fingerprint
from delivery.models import Conversation, Message, Priority
from delivery.selectors import message_content, message_state
from messaging_project.postgresql.base import DatabaseUnanswered

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingress answers for one POST."""

    message_id: str
    conversation_id: str
    seq: int
    state: str
    idempotent_hit: bool
    correlation_id: str
    created_at: datetime


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def message_ingest(
    *,
    sender: User,
    conversation_id: UUID,
    content: str,
    client_key: str | None,
    priority: str = Priority.NORMAL,
    correlation_id: str,
) -> IngestResult:
    """Acknowledge a message after one atomic, idempotent enqueue (dedup, seq, XADD).

    Raises:
      NotFound: no such conversation, or ``sender`` is not a participant.
      PayloadTooLarge: content over ``MAX_CONTENT_BYTES``.
      IdempotencyKeyReused: the client key was used before for a different message.
      ServiceUnavailable: Redis is unreachable; nothing was enqueued.
    """
    started = time.perf_counter()
    status = "error"
    try:
        result = _ingest(sender, str(conversation_id), content, client_key, priority, correlation_id)
        status = "duplicate" if result.idempotent_hit else "accepted"
        return result
    except (NotFound, PayloadTooLarge, IdempotencyKeyReused, ServiceUnavailable) as error:
        status = error.code
        raise
    finally:
        metrics.INGRESS_DURATION.labels(status).observe((time.perf_counter() - started) * 1000)


def _ingest(
    sender: User,
    conversation_id: str,
    content: str,
    client_key: str | None,
    priority: str,
    correlation_id: str,
) -> IngestResult:
    data = content.encode()
    if len(data) > settings.MAX_CONTENT_BYTES:
        raise PayloadTooLarge(f"content is {len(data)} bytes; the limit is {settings.MAX_CONTENT_BYTES}")
    key = (
        IngressKey.for_client(
            sender_id=sender.pk,
            conversation_id=conversation_id,
            client_key=client_key,
            content=data,
            priority=priority,
            ttl_ms=settings.IDEMPOTENCY_TTL_MS,
        )
        if client_key
        else IngressKey.for_content(
            sender_id=sender.pk,
            conversation_id=conversation_id,
            content=data,
            window_ms=settings.IDEMPOTENCY_WINDOW_MS,
        )
    )
    # Slow path, in the same query as the participant check: a client key whose Redis
    # record is gone (older than its TTL, or Redis lost it) is found in the database. The
    # fast path is the enqueue script below, which answers a repeat from the key's record
    # atomically with the enqueue: two requests racing get one message.
    existing_id = _check_sender(conversation_id, sender, key.persisted_key)
    if existing_id is not None:
        return _replay_persisted(Message.objects.get(pk=existing_id), key)

    message_id = str(uuid7())
    created_ms = int(time.time() * 1000)
    envelope: dict[str, Any] = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender.pk,
        "created_at": created_ms,
        "idempotency_key": key.database_key(message_id),
        "correlation_id": correlation_id,
        "priority": priority,
    }
    if len(data) > settings.INLINE_PAYLOAD_MAX_BYTES:
        envelope["payload_key"] = storages["payloads"].save(
            f"{conversation_id}/{message_id}", ContentFile(data)
        )
    else:
        envelope["content"] = content
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=MESSAGES_QUEUE,
        actor_name=PERSIST_ACTOR,
        args=(envelope,),
        kwargs={},
        options={
            "partition_key": conversation_id,
            "sequence_key": conversation_id,
            # The record expires ttl_ms after the first send: a content key's window
            # is measured from the first send, not from the last repeat.
            "idempotency_key": key.redis_key,
            "idempotency_ttl_ms": key.ttl_ms,
            "priority": priority,
            "fingerprint": key.fingerprint,
            "created_at": created_ms,
            "correlation_id": correlation_id,
            # The pending message, written by the enqueue script, deleted with the ack.
            "view_key": pending_message_key(message_id),
            "view_ttl_ms": PENDING_MESSAGE_TTL_MS,
        },
        message_id=message_id,
    )
    try:
        sent = get_broker().enqueue(message)
    except BrokerConnectionError as error:
        logger.error(
            "Enqueue failed: Redis unreachable (%s)",
            error,
            extra={"message_id": message_id, "conversation_id": conversation_id},
        )
        raise ServiceUnavailable(
            "the message queue is unreachable; nothing was accepted, retry later"
        ) from None

    if sent.options.get("idempotent_hit"):
        return _replay(sent, key, conversation_id, correlation_id)
    return IngestResult(
        message_id=message_id,
        conversation_id=conversation_id,
        seq=int(sent.options["seq"]),
        state="pending",
        idempotent_hit=False,
        correlation_id=correlation_id,
        created_at=_from_ms(created_ms),
    )


def _check_sender(conversation_id: str, sender: User, key: str | None) -> Any:
    """Raise NotFound unless ``sender`` takes part in the conversation; return the id of
    the persisted message holding ``key``, if any. One round trip and no ORM query
    compilation: this runs on every POST."""
    params = [sql.prep(Conversation, "id", UUID(conversation_id)), sender.pk, key]
    try:
        is_participant, existing_id = _sender_check_row(params)
    except (OperationalError, InterfaceError) as error:
        # A persistent connection broken since the last request (the database restarted):
        # reconnect once instead of pinging the database before every request. Not after
        # a database that did not answer at all: a second wait would double the answer time.
        if connection.in_atomic_block or isinstance(error.__cause__, DatabaseUnanswered):
            raise
        connection.close()
        is_participant, existing_id = _sender_check_row(params)
    if not is_participant:
        raise NotFound("conversation not found")
    return existing_id


def _sender_check_row(params: list[Any]) -> tuple[bool, Any]:
    with connection.cursor() as cursor:
        cursor.execute(sql.sender_check(), params)
        row = cursor.fetchone()
    return bool(row[0]), row[1]


def _replay(
    original: dramatiq.Message[Any], key: IngressKey, conversation_id: str, correlation_id: str
) -> IngestResult:
    """The answer to a repeat found in Redis."""
    options = original.options
    key.check_repeat(str(options.get("fingerprint", "")))
    metrics.IDEMPOTENCY_HIT.labels("ingress", "cache").inc()
    return IngestResult(
        message_id=original.message_id,
        conversation_id=conversation_id,
        seq=int(options["seq"]),
        state=message_state(original.message_id),
        idempotent_hit=True,
        correlation_id=str(options.get("correlation_id") or correlation_id),
        created_at=_from_ms(int(options.get("created_at") or original.message_timestamp)),
    )


def _replay_persisted(existing: Message, key: IngressKey) -> IngestResult:
    """The answer to a repeat found in the database."""
    key.check_repeat(fingerprint(content=message_content(existing), priority=existing.priority))
    metrics.IDEMPOTENCY_HIT.labels("ingress", "db").inc()
    return IngestResult(
        message_id=str(existing.pk),
        conversation_id=str(existing.conversation_id),
        seq=existing.seq,
        state="persisted",
        idempotent_hit=True,
        correlation_id=existing.correlation_id,
        created_at=existing.created_at,
    )
