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

from delivery.broker import get_broker, pending_message_key
from delivery.errors import NotFound
from delivery.models import Conversation, DeadLetter, DeadLetterStatus, Message, MessageReceipt

logger = logging.getLogger(__name__)


def pending_message(message_id: str) -> dict[str, Any] | None:
    """The envelope (with ``seq``) of an acknowledged message that is not persisted yet.

    The enqueue script stores it (``view_key``) and the ack of its persistence deletes it.
    None when there is none, or when Redis cannot be asked (logged): the caller answers
    as for an unknown message.
    """
    try:
        message = get_broker().message_view(pending_message_key(message_id))
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


def message_detail(*, user: User, message_id: UUID) -> MessageDetail:
    """One message for ``user``: persisted, dead-lettered, discarded or still pending."""
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
