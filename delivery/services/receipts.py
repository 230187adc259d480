"""Writes of receipts reported per message (SENT receipts are written with the message)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.db import connection

from delivery import metrics, sql
from delivery.errors import Conflict, Forbidden, NotFound
from delivery.models import Conversation, Message, MessageReceipt, ReceiptState
from delivery.selectors import pending_message


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
    params: list[Any] = []
    for s in states:
        params.extend([sql.prep(MessageReceipt, "message", message.pk), user.pk, s])
    with connection.cursor() as cursor:
        cursor.execute(sql.insert_receipts(len(states)), params)
        created = {row[0] for row in cursor.fetchall()}
    if state not in created:
        metrics.IDEMPOTENCY_HIT.labels("receipt", "db").inc()
        return False
    return True
