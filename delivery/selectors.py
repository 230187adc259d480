"""Reads of the delivery domain. Access rules live here: only participants see a
conversation and its messages; everyone else gets "not found", so existence does not leak."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.core.files.storage import storages
from django.db import connection
from django.db.models import QuerySet
from dramatiq.errors import BrokerConnectionError

from delivery import sql
from delivery.broker import MESSAGES_QUEUE, get_broker
from delivery.errors import NotFound
from delivery.message_ids import partition_of_message_id
from delivery.models import (
    Conversation,
    DeadLetter,
    DeadLetterStatus,
    Message,
    MessageReceipt,
    ReadWatermark,
)
from delivery.receipt_states import Receipt, Watermark, message_receipts

#: Where a conversation's unread count stops (clients show "100+", as badges do): each
#: unread message counted costs an index entry and a heap row (its sender), so the cap
#: bounds what a long-unread conversation costs the conversation list (~1 µs a message).
UNREAD_COUNT_MAX = 100

logger = logging.getLogger(__name__)


def pending_message(message_id: str) -> dict[str, Any] | None:
    """The envelope (with ``seq``) of an acknowledged message that is not persisted yet.

    The enqueue script notes where it is (the broker's ``locate`` option, in the partition
    the message id carries), and the ack of its persistence forgets it. None when there is
    none, or when Redis cannot be asked (logged): the caller answers as for an unknown
    message.
    """
    partition = partition_of_message_id(message_id)
    if partition is None:
        return None
    try:
        message = get_broker().locate(MESSAGES_QUEUE, partition, message_id)
    except BrokerConnectionError as error:
        logger.warning(
            "Pending message %s not read: Redis unreachable (%s)",
            message_id,
            error,
            extra={"message_id": message_id},
        )
        return None
    if message is None or not message.args:
        return None
    return {**message.args[0], "seq": message.options.get("seq")}


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    """The conversations ``user`` takes part in, newest first."""
    return (
        Conversation.objects.filter(participants=user)
        .prefetch_related("participants")
        .order_by("-created_at")
    )


def unread_counts(*, user: User) -> dict[UUID, int]:
    """For each conversation ``user`` takes part in, the persisted messages after the
    user's read watermark that others sent, up to :data:`UNREAD_COUNT_MAX`. One indexed
    query for all of them (``sql.unread_counts``)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.unread_counts(), [UNREAD_COUNT_MAX, user.pk])
        return {UUID(str(conversation_id)): int(count) for conversation_id, count in cursor.fetchall()}


def _watermark(row: ReadWatermark) -> Watermark:
    return Watermark(
        conversation_id=str(row.conversation_id),
        read_seq=row.read_seq,
        read_at=row.read_at,
        delivered_seq=row.delivered_seq,
        delivered_at=row.delivered_at,
    )


def watermark_of(*, user: User, conversation_id: UUID) -> Watermark | None:
    """``user``'s watermark of a conversation; None before the first report."""
    row = ReadWatermark.objects.filter(conversation_id=conversation_id, user=user).first()
    return _watermark(row) if row is not None else None


def conversation_for(*, user: User, conversation_id: UUID) -> Conversation:
    """The conversation, if ``user`` takes part in it."""
    conversation = Conversation.objects.filter(pk=conversation_id, participants=user).first()
    if conversation is None:
        raise NotFound("conversation not found")
    return conversation


def message_content(message: Message) -> str:
    """A persisted message's content, read from storage when it was offloaded."""
    if message.payload_key:
        with storages["payloads"].open(message.payload_key, "rb") as payload:
            return payload.read().decode()
    return message.content


#: A message's state, by the status of its latest dead letter (requeued: back in the queue).
_STATE_OF_DEAD_LETTER = {
    DeadLetterStatus.DEAD: "dead_lettered",
    DeadLetterStatus.DISCARDED: "discarded",
    DeadLetterStatus.REQUEUED: "pending",
}


def _latest_dead_letter(message_id: str) -> DeadLetter | None:
    """The message's latest dead letter (it may have been dead-lettered, requeued and
    dead-lettered again), if any."""
    return DeadLetter.objects.filter(message_id=message_id).order_by("-dead_lettered_at", "-pk").first()


def message_state(message_id: str) -> str:
    """``persisted``, ``dead_lettered``, ``discarded`` or ``pending``."""
    if Message.objects.filter(pk=message_id).exists():
        return "persisted"
    dead = _latest_dead_letter(message_id)
    return _STATE_OF_DEAD_LETTER[DeadLetterStatus(dead.status)] if dead is not None else "pending"


@dataclass(frozen=True, slots=True)
class MessageDetail:
    """A message as the API shows it, whatever its state."""

    message_id: str
    conversation_id: str
    seq: int
    sender: str
    content: str
    state: str
    created_at: datetime
    persisted_at: datetime | None
    receipts: list[dict[str, Any]] = field(default_factory=list)


def _is_participant(user: User, conversation_id: str) -> bool:
    return Conversation.objects.filter(pk=conversation_id, participants=user).exists()


def _username(user_id: int) -> str:
    return User.objects.filter(pk=user_id).values_list("username", flat=True).first() or ""


def _envelope_content(envelope: dict[str, Any]) -> str:
    if envelope.get("payload_key"):
        with storages["payloads"].open(envelope["payload_key"], "rb") as payload:
            return payload.read().decode()
    return str(envelope.get("content", ""))


def _receipts_of(message: Message) -> list[Receipt]:
    """A persisted message's receipts: SENT for every recipient, and what the recipients'
    watermarks and the message's own receipt rows say (``delivery/receipt_states.py``).
    Three indexed queries (recipients, rows, watermarks), whatever the conversation's size."""
    recipients = (
        User.objects.filter(conversations=message.conversation_id)
        .exclude(pk=message.sender_id)
        .values_list("username", flat=True)
    )
    rows = [
        Receipt(user=username, state=state, timestamp=timestamp)
        for username, state, timestamp in MessageReceipt.objects.filter(message=message).values_list(
            "user__username", "state", "timestamp"
        )
    ]
    watermarks = {
        w.user.get_username(): _watermark(w)
        for w in ReadWatermark.objects.filter(
            conversation_id=message.conversation_id, delivered_seq__gte=message.seq
        )
        .exclude(user_id=message.sender_id)
        .select_related("user")
    }
    return message_receipts(
        seq=message.seq,
        persisted_at=message.persisted_at,
        recipients=list(recipients),
        rows=rows,
        watermarks=watermarks,
    )


def message_detail(*, user: User, message_id: UUID) -> MessageDetail:
    """One message for ``user``: persisted, dead-lettered, discarded or still pending."""
    message = Message.objects.select_related("sender").filter(pk=message_id).first()
    if message is not None:
        if not _is_participant(user, str(message.conversation_id)):
            raise NotFound("message not found")
        receipts = [
            {"user": r.user, "state": r.state, "timestamp": r.timestamp} for r in _receipts_of(message)
        ]
        return MessageDetail(
            message_id=str(message.pk),
            conversation_id=str(message.conversation_id),
            seq=message.seq,
            sender=message.sender.get_username(),
            content=message_content(message),
            state="persisted",
            created_at=message.created_at,
            persisted_at=message.persisted_at,
            receipts=receipts,
        )
    dead = _latest_dead_letter(str(message_id))
    state = _STATE_OF_DEAD_LETTER[DeadLetterStatus(dead.status)] if dead is not None else "pending"
    envelope = dead.envelope if dead is not None and state != "pending" else None
    if envelope is None:  # pending, or requeued: in the queue again
        envelope = pending_message(str(message_id)) or (dead.envelope if dead is not None else None)
    if not envelope or not _is_participant(user, str(envelope.get("conversation_id"))):
        raise NotFound("message not found")
    seq = dead.seq if dead is not None and dead.seq is not None else envelope.get("seq", 0)
    return MessageDetail(
        message_id=str(message_id),
        conversation_id=str(envelope["conversation_id"]),
        seq=int(seq or 0),
        sender=_username(int(envelope["sender_id"])),
        content=_envelope_content(envelope),
        state=state,
        created_at=datetime.fromtimestamp(int(envelope["created_at"]) / 1000, UTC),
        persisted_at=None,
    )


def message_page_contents(messages: list[Message], *, max_bytes: int) -> list[tuple[Message, str]]:
    """The leading ``messages`` whose contents add up to at most ``max_bytes`` (UTF-8), and
    those contents; always at least the first one. An offloaded payload's size is asked
    of its storage before it is read, so a page never reads far past its budget."""
    page: list[tuple[Message, str]] = []
    total = 0
    for message in messages:
        if message.payload_key:
            size = storages["payloads"].size(message.payload_key)
        else:
            size = len(message.content.encode())
        if page and total + size > max_bytes:
            break
        page.append((message, message_content(message)))
        total += size
    return page


def conversation_messages(*, user: User, conversation_id: UUID, after_seq: int, limit: int) -> list[Message]:
    """Persisted messages of a conversation with ``seq > after_seq``, in ``seq`` order."""
    conversation_for(user=user, conversation_id=conversation_id)
    return list(
        Message.objects.filter(conversation_id=conversation_id, seq__gt=after_seq)
        .select_related("sender")
        .order_by("seq")[:limit]
    )
