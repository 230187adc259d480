"""Writes of the delivery domain: ingest, persist, receipts, conversations, dead letters.

Views, actors, the admin and commands call these; none of them holds business rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from uuid import UUID

import dramatiq
import redis
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from dramatiq.errors import BrokerConnectionError
from uuid_utils.compat import uuid7

from brokers import DeadLetterNotFound
from delivery import metrics
from delivery.broker import (
    MESSAGES_QUEUE,
    PENDING_MESSAGE_TTL_MS,
    PERSIST_ACTOR,
    get_broker,
    pending_message_key,
)
from delivery.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from delivery.models import (
    Conversation,
    DeadLetter,
    DeadLetterStatus,
    Message,
    MessageReceipt,
    Priority,
    ReceiptState,
)
from delivery.selectors import message_state, pending_message

logger = logging.getLogger(__name__)


class IdempotencyKeyConflict(Exception):
    """Two different messages carry the same idempotency key (a client reused its key
    for another conversation while the first message was still in flight)."""


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


def conversation_create(*, creator: User, participant_usernames: list[str], title: str = "") -> Conversation:
    """Create a conversation between ``creator`` and the named users."""
    names = set(participant_usernames)
    users = list(User.objects.filter(username__in=names))
    missing = names - {u.username for u in users}
    if missing:
        raise NotFound(
            f"unknown users: {', '.join(sorted(missing))}", extra={"unknown_users": sorted(missing)}
        )
    with transaction.atomic():
        conversation = Conversation.objects.create(title=title)
        conversation.participants.add(creator, *users)
    return conversation


def _fingerprint(conversation_id: str, priority: str, content: bytes) -> str:
    return hashlib.sha256(f"{conversation_id}\n{priority}\n".encode() + content).hexdigest()[:32]


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
    fingerprint = _fingerprint(conversation_id, priority, data)
    message_id = str(uuid7())
    if client_key:
        key = f"c:{sender.pk}:{client_key}"
        ttl_ms = settings.IDEMPOTENCY_TTL_MS
        db_key = key
        # Slow path, in the same query as the participant check: a key whose Redis record
        # is gone (older than a day, or Redis lost it) is found in the database. The fast
        # path is the enqueue script below, which answers a repeat from the key's record
        # (kept for a day) atomically with the enqueue: two requests racing get one message.
        existing_id = _check_sender(conversation_id, sender, key)
        if existing_id is not None:
            return _replay_persisted(Message.objects.get(pk=existing_id), fingerprint)
    else:
        _check_sender(conversation_id, sender, None)
        digest = hashlib.sha256(f"{conversation_id}\n{sender.pk}\n".encode() + data).hexdigest()[:40]
        key = f"d:{sender.pk}:{digest}"
        # The window is measured from the first send: the record expires that long after it.
        ttl_ms = settings.IDEMPOTENCY_WINDOW_MS
        db_key = f"{key}:{message_id}"

    created_ms = int(time.time() * 1000)
    envelope: dict[str, Any] = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender.pk,
        "created_at": created_ms,
        "idempotency_key": db_key,
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
            "idempotency_key": key,
            "idempotency_ttl_ms": ttl_ms,
            "priority": priority,
            "fingerprint": fingerprint if client_key else "",
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
        logger.error("Enqueue failed: Redis unreachable (%s)", error)
        raise ServiceUnavailable(
            "the message queue is unreachable; nothing was accepted, retry later"
        ) from None

    if sent.options.get("idempotent_hit"):
        return _replay(sent, fingerprint if client_key else "", conversation_id, correlation_id)
    seq = int(sent.options["seq"])
    return IngestResult(
        message_id=message_id,
        conversation_id=conversation_id,
        seq=seq,
        state="pending",
        idempotent_hit=False,
        correlation_id=correlation_id,
        created_at=_from_ms(created_ms),
    )


def _check_sender(conversation_id: str, sender: User, key: str | None) -> Any:
    """Raise NotFound unless ``sender`` takes part in the conversation; return the id of
    the persisted message holding ``key``, if any. One round trip and no ORM query
    compilation: this runs on every POST."""
    params = [_prep(Conversation, "id", UUID(conversation_id)), sender.pk, key]
    try:
        is_participant, existing_id = _sender_check_row(params)
    except (OperationalError, InterfaceError):
        # A persistent connection broken since the last request (the database restarted):
        # reconnect once instead of pinging the database before every request.
        if connection.in_atomic_block:
            raise
        connection.close()
        is_participant, existing_id = _sender_check_row(params)
    if not is_participant:
        raise NotFound("conversation not found")
    return existing_id


@cache
def _sender_check_sql() -> str:
    participants = Conversation.participants.through._meta.db_table
    return (
        f"SELECT EXISTS (SELECT 1 FROM {participants} WHERE conversation_id = %s AND user_id = %s), "
        f"(SELECT id FROM {Message._meta.db_table} WHERE idempotency_key = %s)"
    )


def _sender_check_row(params: list[Any]) -> tuple[bool, Any]:
    with connection.cursor() as cursor:
        cursor.execute(_sender_check_sql(), params)
        row = cursor.fetchone()
    return bool(row[0]), row[1]


def _replay(
    original: dramatiq.Message[Any], fingerprint: str, conversation_id: str, correlation_id: str
) -> IngestResult:
    """The answer to a repeat found in Redis (``fingerprint`` empty: keyless, no check)."""
    options = original.options
    if fingerprint and options.get("fingerprint") != fingerprint:
        raise IdempotencyKeyReused("this idempotency key was used for a different message")
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


def _replay_persisted(existing: Message, fingerprint: str) -> IngestResult:
    from delivery.selectors import message_content

    stored = _fingerprint(
        str(existing.conversation_id), existing.priority, message_content(existing).encode()
    )
    if stored != fingerprint:
        raise IdempotencyKeyReused("this idempotency key was used for a different message")
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


@dataclass(frozen=True, slots=True)
class PersistOutcome:
    """What one persisted batch did."""

    inserted: int
    duplicates: int


def messages_persist(*, envelopes: list[dict[str, Any]]) -> PersistOutcome:
    """Insert a batch of messages (each with its ``seq``) in one transaction.

    One multi-row ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING``;
    rows already there are idempotent hits, not errors. SENT receipts for the
    recipients are written by the same statement.

    Raises:
      IdempotencyKeyConflict: a *different* message already holds an envelope's key.
    """
    started = time.perf_counter()
    status = "error"
    try:
        outcome = _persist(envelopes)
        status = "success" if outcome.duplicates == 0 else "duplicate"
        return outcome
    finally:
        metrics.PERSISTENCE_DURATION.labels(status).observe((time.perf_counter() - started) * 1000)


def _prep(model: type[Any], field: str, value: Any) -> Any:
    return model._meta.get_field(field).get_db_prep_save(value, connection)


#: Columns of a persisted message, in the order both insert paths use.
_COLUMNS = (
    "id",
    "conversation_id",
    "sender_id",
    "content",
    "payload_key",
    "seq",
    "idempotency_key",
    "correlation_id",
    "priority",
    "created_at",
)
#: How the PostgreSQL statement reads each column from a message's JSON array (element i
#: is column i; ``created_at`` arrives as epoch milliseconds).
_FROM_JSON = (
    "(x->>0)::uuid",
    "(x->>1)::uuid",
    "(x->>2)::integer",
    "x->>3",
    "x->>4",
    "(x->>5)::bigint",
    "x->>6",
    "x->>7",
    "x->>8",
    "timestamptz 'epoch' + (x->>9)::bigint * interval '1 millisecond'",
)


def _json_row(e: dict[str, Any]) -> list[Any]:
    """An envelope's columns as the persist statement's JSON takes them."""
    return [
        e["message_id"],
        e["conversation_id"],
        e["sender_id"],
        e.get("content", ""),
        e.get("payload_key", ""),
        int(e["seq"]),
        e["idempotency_key"],
        e.get("correlation_id", ""),
        e.get("priority", Priority.NORMAL),
        int(e["created_at"]),
    ]


def _row(e: dict[str, Any]) -> tuple[Any, ...]:
    """The same columns as typed values, for the portable path's field preparation."""
    message_id, conversation_id, *middle, created_ms = _json_row(e)
    return (UUID(message_id), UUID(conversation_id), *middle, _from_ms(created_ms))


@cache
def _insert_postgresql_sql() -> str:
    message_table = Message._meta.db_table
    receipt_table = MessageReceipt._meta.db_table
    participants = Conversation.participants.through._meta.db_table
    return (
        f"WITH inserted AS ("
        f"  INSERT INTO {message_table} ({', '.join(_COLUMNS)})"
        f"  SELECT {', '.join(_FROM_JSON)} FROM jsonb_array_elements(%s::jsonb) AS x"
        f"  ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, conversation_id, sender_id"
        f"), receipts AS ("
        f"  INSERT INTO {receipt_table} (message_id, user_id, state)"
        f"  SELECT i.id, p.user_id, %s FROM inserted i"
        f"  JOIN {participants} p ON p.conversation_id = i.conversation_id AND p.user_id <> i.sender_id"
        f"  ON CONFLICT (message_id, user_id, state) DO NOTHING"
        f") SELECT id FROM inserted"
    )


def _insert_postgresql(cursor: Any, envelopes: list[dict[str, Any]]) -> list[UUID]:
    """One statement: the messages and, for the rows really inserted, SENT receipts.
    The batch travels as one JSON document (a row per message): encoding it is one C
    call, where array parameters were quoted element by element in Python."""
    document = json.dumps([_json_row(e) for e in envelopes])
    cursor.execute(_insert_postgresql_sql(), [document, str(ReceiptState.SENT)])
    return [row[0] for row in cursor.fetchall()]


def _insert_portable(cursor: Any, rows: list[tuple[Any, ...]]) -> list[UUID]:
    """The same for other databases (SQLite in the quick start): two statements."""
    message_table = Message._meta.db_table
    fields = ["id", "conversation", "sender", "content", "payload_key", "seq", "idempotency_key",
              "correlation_id", "priority", "created_at"]  # fmt: skip
    params = [_prep(Message, f, v) for row in rows for f, v in zip(fields, row, strict=True)]
    one = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    cursor.execute(
        f"INSERT INTO {message_table} ({', '.join(_COLUMNS)}) VALUES {', '.join([one] * len(rows))} "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        params,
    )
    inserted = [UUID(str(row[0])) for row in cursor.fetchall()]
    if inserted:
        receipt_table = MessageReceipt._meta.db_table
        participants = Conversation.participants.through._meta.db_table
        marks = ", ".join(["%s"] * len(inserted))
        cursor.execute(
            f"INSERT INTO {receipt_table} (message_id, user_id, state) "
            f"SELECT m.id, p.user_id, %s FROM {message_table} m "
            f"JOIN {participants} p ON p.conversation_id = m.conversation_id "
            f"WHERE m.id IN ({marks}) AND p.user_id <> m.sender_id "
            "ON CONFLICT (message_id, user_id, state) DO NOTHING",
            [ReceiptState.SENT, *(_prep(Message, "id", i) for i in inserted)],
        )
    return inserted


def _persist(envelopes: list[dict[str, Any]]) -> PersistOutcome:
    if not envelopes:
        return PersistOutcome(0, 0)
    if connection.vendor == "postgresql":
        # One statement is atomic on its own: one round trip, no BEGIN and COMMIT.
        with connection.cursor() as cursor:
            inserted = _insert_postgresql(cursor, envelopes)
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            inserted = _insert_portable(cursor, [_row(e) for e in envelopes])
    if len(inserted) < len(envelopes):
        # Rows already there are repeats of the same messages (hits), unless another
        # message holds the key: then the batch fails (the rows it inserted are kept and
        # count as hits when it is split and retried) and that message is dead-lettered.
        done = set(inserted)
        skipped = [e for e in envelopes if UUID(e["message_id"]) not in done]
        holders = dict(
            Message.objects.filter(idempotency_key__in=[e["idempotency_key"] for e in skipped]).values_list(
                "idempotency_key", "id"
            )
        )
        for e in skipped:
            if holders.get(e["idempotency_key"]) != UUID(e["message_id"]):
                raise IdempotencyKeyConflict(
                    f"message {e['message_id']} carries key {e['idempotency_key']!r}, "
                    f"already used by message {holders.get(e['idempotency_key'])}"
                )
    duplicates = len(envelopes) - len(inserted)
    if duplicates:
        metrics.IDEMPOTENCY_HIT.labels("persistence", "db").inc(duplicates)
    # The pending messages are deleted with the ack (the ``view_key`` option).
    return PersistOutcome(inserted=len(inserted), duplicates=duplicates)


def receipt_record(*, message_id: UUID, user: User, state: str) -> bool:
    """Record that ``user`` reached ``state`` (delivered or read) for a message.

    States only move forward and ``read`` implies ``delivered``; a state already
    reached (or passed) is a no-op. Returns True when ``state`` is new.

    Raises:
      NotFound: no such message, or ``user`` is not in its conversation.
      Forbidden: ``user`` sent the message.
      Conflict: the message is not persisted yet.
    """
    message = Message.objects.filter(pk=message_id).only("id", "conversation_id", "sender_id").first()
    if message is None:
        pending = pending_message(str(message_id))
        if pending and Conversation.objects.filter(pk=pending["conversation_id"], participants=user).exists():
            raise Conflict("the message is not persisted yet; retry shortly")
        raise NotFound("message not found")
    if not Conversation.objects.filter(pk=message.conversation_id, participants=user).exists():
        raise NotFound("message not found")
    if message.sender_id == user.pk:
        raise Forbidden("only recipients record receipts")
    states = (
        [ReceiptState.DELIVERED]
        if state == ReceiptState.DELIVERED
        else [ReceiptState.DELIVERED, ReceiptState.READ]
    )
    table = MessageReceipt._meta.db_table
    values = ", ".join(["(%s, %s, %s)"] * len(states))
    params: list[Any] = []
    for s in states:
        params.extend([_prep(MessageReceipt, "message", message.pk), user.pk, s])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (message_id, user_id, state) VALUES {values} "
            "ON CONFLICT (message_id, user_id, state) DO NOTHING RETURNING state",
            params,
        )
        created = {row[0] for row in cursor.fetchall()}
    if state not in created:
        metrics.IDEMPOTENCY_HIT.labels("receipt", "db").inc()
        return False
    return True


# -- dead letters ------------------------------------------------------------------------


def dead_letters_mirror() -> int:
    """Copy new entries of the broker's dead-letter streams into ``DeadLetter`` rows.

    Idempotent on the dead-letter stream entry id, so a crash mid-mirror duplicates
    nothing. Returns the number of new rows.
    """
    broker = get_broker()
    created = 0
    for queue_name in sorted(broker.get_declared_queues() | {MESSAGES_QUEUE}):
        entries = broker.dead_letters(queue_name)
        if not entries:
            continue
        known = set(
            DeadLetter.objects.filter(
                queue=queue_name, dead_letter_id__in=[e.dead_letter_id for e in entries]
            ).values_list("partition", "dead_letter_id")
        )
        rows = []
        for e in entries:
            if (e.partition, e.dead_letter_id) in known:
                continue
            envelope: dict[str, Any] = {}
            message_id = ""
            actor_name = ""
            if e.message is not None:
                message_id = e.message.message_id
                actor_name = e.message.actor_name
                first = e.message.args[0] if e.message.args else None
                envelope = (
                    {
                        "args": list(e.message.args),
                        "kwargs": e.message.kwargs,
                        "options": e.message.options,
                    }
                    if not isinstance(first, dict)
                    else dict(first)
                )
            else:
                envelope = {"raw": e.raw_message.decode("utf-8", "replace")}
            rows.append(
                DeadLetter(
                    queue=queue_name,
                    partition=e.partition,
                    dead_letter_id=e.dead_letter_id,
                    stream_id=e.stream_id,
                    message_id=message_id,
                    actor_name=actor_name,
                    conversation_id=str(envelope.get("conversation_id", "")),
                    correlation_id=str(envelope.get("correlation_id", "")),
                    seq=e.seq,
                    envelope=envelope,
                    reason=e.reason,
                    error=e.error,
                    traceback=e.traceback,
                    attempts=e.attempts,
                    dead_lettered_at=_from_ms(e.dead_lettered_at_ms or int(time.time() * 1000)),
                )
            )
        if rows:
            DeadLetter.objects.bulk_create(rows, ignore_conflicts=True)
            created += len(rows)
    return created


def _log_admin_action(dead_letter: DeadLetter, user: User | None, action: str) -> None:
    if user is None or not user.pk:
        return
    LogEntry.objects.log_actions(
        user_id=user.pk, queryset=[dead_letter], action_flag=CHANGE, change_message=action, single_object=True
    )


def dead_letter_requeue(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Put a dead letter back on its original partition (same id, options and ``seq``).

    A message that is already persisted is not requeued (a harmless no-op); returns
    whether it was requeued.
    """
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    message_uuid = _uuid_or_none(dead_letter.message_id)
    if message_uuid is not None and Message.objects.filter(pk=message_uuid).exists():
        requeued = False
        try:
            get_broker().discard_dead_letter(
                dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id
            )
        except redis.RedisError as error:
            raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    else:
        try:
            get_broker().requeue_dead_letter(
                dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id
            )
        except DeadLetterNotFound:
            pass  # requeued or discarded elsewhere already; record it as done
        except redis.RedisError as error:
            raise ServiceUnavailable(f"Redis unreachable: {error}") from None
        requeued = True
    _set_status(dead_letter, DeadLetterStatus.REQUEUED, user)
    _log_admin_action(dead_letter, user, "Requeued" if requeued else "Requeue skipped: already persisted")
    return requeued


def dead_letter_discard(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Drop a dead letter for good; returns False when it was not dead any more."""
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    try:
        get_broker().discard_dead_letter(dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id)
    except redis.RedisError as error:
        raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    _set_status(dead_letter, DeadLetterStatus.DISCARDED, user)
    _log_admin_action(dead_letter, user, "Discarded")
    return True


def _set_status(dead_letter: DeadLetter, status: str, user: User | None) -> None:
    dead_letter.status = status
    dead_letter.status_changed_by = user if user is not None and user.pk else None
    dead_letter.status_changed_at = timezone.now()
    dead_letter.save(update_fields=["status", "status_changed_by", "status_changed_at"])


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
