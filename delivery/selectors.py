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
from django.db.models import QuerySet
from dramatiq.errors import BrokerConnectionError

from delivery.broker import MESSAGES_QUEUE, get_broker
from delivery.errors import NotFound
from delivery.message_ids import partition_of_message_id
from delivery.models import Conversation, DeadLetter, DeadLetterStatus, Message, MessageReceipt

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


def message_state(message_id: str) -> str:
    """``persisted``, ``dead_lettered`` or ``pending``."""
    if Message.objects.filter(pk=message_id).exists():
        return "persisted"
    if DeadLetter.objects.filter(message_id=message_id, status=DeadLetterStatus.DEAD).exists():
        return "dead_lettered"
    return "pending"


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


def message_detail(*, user: User, message_id: UUID) -> MessageDetail:
    """One message for ``user``: persisted, dead-lettered or still pending."""
    message = Message.objects.select_related("sender").filter(pk=message_id).first()
    if message is not None:
        if not _is_participant(user, str(message.conversation_id)):
            raise NotFound("message not found")
        receipts = [
            {"user": r.user.get_username(), "state": r.state, "timestamp": r.timestamp}
            for r in MessageReceipt.objects.filter(message=message)
            .select_related("user")
            .order_by("timestamp", "id")
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
    dead = DeadLetter.objects.filter(message_id=str(message_id), status=DeadLetterStatus.DEAD).first()
    envelope = dead.envelope if dead is not None else pending_message(str(message_id))
    if not envelope or not _is_participant(user, str(envelope.get("conversation_id"))):
        raise NotFound("message not found")
    seq = dead.seq if dead is not None and dead.seq is not None else envelope.get("seq", 0)
    return MessageDetail(
        message_id=str(message_id),
        conversation_id=str(envelope["conversation_id"]),
        seq=int(seq or 0),
        sender=_username(int(envelope["sender_id"])),
        content=_envelope_content(envelope),
        state="dead_lettered" if dead is not None else "pending",
        created_at=datetime.fromtimestamp(int(envelope["created_at"]) / 1000, UTC),
        persisted_at=None,
    )


def conversation_messages(*, user: User, conversation_id: UUID, after_seq: int, limit: int) -> list[Message]:
    """Persisted messages of a conversation with ``seq > after_seq``, in ``seq`` order."""
    conversation_for(user=user, conversation_id=conversation_id)
    return list(
        Message.objects.filter(conversation_id=conversation_id, seq__gt=after_seq)
        .select_related("sender")
        .order_by("seq")[:limit]
    )
