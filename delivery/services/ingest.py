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

from brokers import NotReplicated, partition_for
from delivery import metrics, sql
from delivery.broker import MESSAGES_QUEUE, PERSIST_ACTOR, get_broker
from delivery.errors import IdempotencyKeyReused, NotFound, PayloadTooLarge, ServiceUnavailable
from delivery.idempotency import IngressKey, digest, fingerprint
from delivery.message_ids import message_id_time_ms, new_message_id
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
        metrics.observe_ingress(status, (time.perf_counter() - started) * 1000)


@dataclass(frozen=True, slots=True)
class IngressItem:
    """One message to acknowledge, as validated by the API."""

    conversation_id: str
    content: str
    client_key: str | None
    priority: str = Priority.NORMAL


@dataclass(slots=True)
class Prepared:
    """A message ready to enqueue: its key and the Dramatiq message carrying it."""

    item: IngressItem
    key: IngressKey
    message: dramatiq.Message[Any]


def _ingest(
    sender: User,
    conversation_id: str,
    content: str,
    client_key: str | None,
    priority: str,
    correlation_id: str,
) -> IngestResult:
    item = IngressItem(conversation_id, content, client_key, priority)
    key = ingress_key(sender, item)
    # Slow path, in the same query as the participant check: a client key whose Redis
    # record is gone (its message persisted a while ago, or Redis lost it) is found in the
    # database. The fast path is the enqueue script, which answers a repeat from the key's
    # record atomically with the enqueue: two requests racing get one message.
    existing_id = _check_sender(conversation_id, sender, key.persisted_key)
    if existing_id is not None:
        return replay_persisted(Message.objects.get(pk=existing_id), key)
    prepared = prepare(sender, item, key, correlation_id)
    try:
        sent = get_broker().enqueue(prepared.message)
    except (BrokerConnectionError, NotReplicated) as error:
        raise queue_unreachable(error, prepared.message.message_id, conversation_id) from None
    return answer(prepared, sent, correlation_id)


def ingress_key(sender: User, item: IngressItem) -> IngressKey:
    """The key ``item`` is deduplicated on.

    Raises:
      PayloadTooLarge: content over ``MAX_CONTENT_BYTES``.
    """
    data = item.content.encode()
    if len(data) > settings.MAX_CONTENT_BYTES:
        raise PayloadTooLarge(f"content is {len(data)} bytes; the limit is {settings.MAX_CONTENT_BYTES}")
    if item.client_key:
        return IngressKey.for_client(
            sender_id=sender.pk,
            conversation_id=item.conversation_id,
            client_key=item.client_key,
            content=data,
            priority=item.priority,
        )
    return IngressKey.for_content(
        sender_id=sender.pk,
        conversation_id=item.conversation_id,
        content=data,
        window_ms=settings.IDEMPOTENCY_WINDOW_MS,
    )


def prepare(sender: User, item: IngressItem, key: IngressKey, correlation_id: str) -> Prepared:
    """The Dramatiq message for ``item`` (its content offloaded to storage when large)."""
    conversation_id = item.conversation_id
    message_id = new_message_id(partition_for(conversation_id, settings.STREAM_PARTITIONS))
    # The id's own time: ids sort as messages were acknowledged, and a repeat answered from
    # Redis gets the time back from the id.
    created_ms = message_id_time_ms(message_id)
    envelope: dict[str, Any] = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender.pk,
        "created_at": created_ms,
        "idempotency_key": key.database_key(message_id),
        "correlation_id": correlation_id,
        "priority": item.priority,
    }
    data = item.content.encode()
    if len(data) > settings.INLINE_PAYLOAD_MAX_BYTES:
        envelope["payload_key"] = payload_save(conversation_id, data)
    else:
        envelope["content"] = item.content
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=MESSAGES_QUEUE,
        actor_name=PERSIST_ACTOR,
        args=(envelope,),
        kwargs={},
        options={
            "partition_key": conversation_id,
            "sequence_key": conversation_id,
            # A client key's record lives until the message is persisted (then briefly, while
            # the database takes over answering repeats); a content key's window expires
            # ttl_ms after the first send, not after the last repeat.
            "idempotency_key": key.redis_key,
            "idempotency_ttl_ms": key.ttl_ms,
            "priority": item.priority,
            "fingerprint": key.fingerprint,
            "correlation_id": correlation_id,
            # Where the pending message is: noted by the enqueue script, forgotten with the ack.
            "locate": True,
        },
        message_id=message_id,
        message_timestamp=created_ms,
    )
    return Prepared(item, key, message)


def answer(prepared: Prepared, sent: dramatiq.Message[Any], correlation_id: str) -> IngestResult:
    """What ingress answers once the enqueue script answered for ``prepared``.

    Raises:
      IdempotencyKeyReused: the key was used before for a different message.
    """
    conversation_id = prepared.item.conversation_id
    if sent.options.get("idempotent_hit"):
        return _replay(sent, prepared.key, conversation_id, correlation_id)
    return IngestResult(
        message_id=sent.message_id,
        conversation_id=conversation_id,
        seq=int(sent.options["seq"]),
        state="pending",
        idempotent_hit=False,
        correlation_id=correlation_id,
        created_at=_from_ms(sent.message_timestamp),
    )


def queue_unreachable(error: Exception, message_id: str, conversation_id: str) -> ServiceUnavailable:
    """The answer when Redis cannot be reached, or too few replicas confirmed the enqueue
    (``REDIS_MIN_REPLICAS_ACK``), logged: nothing was acknowledged. A retry with the same
    key is safe either way (a message that did reach Redis is answered, not enqueued again)."""
    if isinstance(error, NotReplicated):
        what = "Enqueue not confirmed by enough replicas (%s)"
        answer = "the message queue could not confirm the message on its replicas"
    else:
        what = "Enqueue failed: Redis unreachable (%s)"
        answer = "the message queue is unreachable; nothing was accepted"
    logger.error(what, error, extra={"message_id": message_id, "conversation_id": conversation_id})
    return ServiceUnavailable(f"{answer}; retry with the same Idempotency-Key")


def payload_save(conversation_id: str, data: bytes) -> str:
    """Store content too large to travel inline; returns its storage name.

    Named by its digest within the conversation: a repeat, a refused request or a retry
    after a 503 writes the same name again instead of an orphan each time (what nothing
    references is swept by ``manage.py payloads sweep``).
    """
    name = f"{conversation_id}/{digest(data)}"
    storage = storages["payloads"]
    if not storage.exists(name):
        storage.save(name, ContentFile(data))
    return name


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
        created_at=_from_ms(original.message_timestamp),
    )


def replay_persisted(existing: Message, key: IngressKey) -> IngestResult:
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
