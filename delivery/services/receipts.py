"""Writes of receipts: read watermarks per (conversation, user), and receipts reported
per message. SENT is implied by the persisted message and never written."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.db import connection

from delivery import metrics, sql
from delivery.errors import Conflict, Forbidden, InvalidInput, NotFound
from delivery.models import Conversation, Message, MessageReceipt, ReadWatermark, ReceiptState
from delivery.receipt_states import Watermark
from delivery.selectors import pending_message, watermark_of

#: The largest ``seq`` (PostgreSQL's ``bigint``).
MAX_SEQ = 2**63 - 1


def watermark_advance(
    *, conversation_id: UUID, user: User, seq: int, state: str = ReceiptState.READ
) -> Watermark:
    """Move ``user``'s watermark of a conversation forward: every message up to ``seq`` is
    read (``state`` read, which implies delivered) or delivered (``state`` delivered).

    One statement whatever the conversation's size (``sql.advance_watermark``), safe
    under concurrency: the watermark never moves back, so a smaller ``seq`` than the
    current one (a late or repeated report) changes nothing. ``seq`` is clamped to the
    conversation's highest persisted ``seq``: messages not persisted yet stay unread.
    ``seq`` 0 marks nothing. Returns the watermark as it now stands.

    Raises:
      InvalidInput: ``seq`` is negative or past a ``bigint``, or ``state`` is neither
        read nor delivered.
      NotFound: no such conversation, or ``user`` is not in it.
    """
    if not 0 <= seq <= MAX_SEQ:
        raise InvalidInput("seq", f"Ensure this value is between 0 and {MAX_SEQ}.")
    if state not in (ReceiptState.READ, ReceiptState.DELIVERED):
        raise InvalidInput("state", f'"{state}" is not a valid choice.')
    read_target = seq if state == ReceiptState.READ else 0
    conversation = sql.prep(ReadWatermark, "conversation", conversation_id)
    with connection.cursor() as cursor:
        cursor.execute(
            sql.advance_watermark(connection.vendor),
            [read_target, seq, conversation, conversation, user.pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise NotFound("conversation not found")
    read_seq, read_at, delivered_seq, delivered_at = row
    return Watermark(
        conversation_id=str(conversation_id),
        read_seq=int(read_seq),
        read_at=sql.aware_datetime(read_at),
        delivered_seq=int(delivered_seq),
        delivered_at=sql.aware_datetime(delivered_at),
    )


def receipt_record(*, message_id: UUID, user: User, state: str) -> bool:
    """Record that ``user`` reached ``state`` (delivered or read) for a message.

    States only move forward and ``read`` implies ``delivered``; a state already
    reached (or passed), by a row of this message or by the user's watermark of its
    conversation, is a no-op. Returns True when ``state`` is new.

    Raises:
      NotFound: no such message, or ``user`` is not in its conversation.
      Forbidden: ``user`` sent the message.
      Conflict: the message is not persisted yet.
    """
    message = Message.objects.filter(pk=message_id).only("id", "conversation_id", "sender_id", "seq").first()
    if message is None:
        pending = pending_message(str(message_id))
        if pending and Conversation.objects.filter(pk=pending["conversation_id"], participants=user).exists():
            raise Conflict("the message is not persisted yet; retry shortly")
        raise NotFound("message not found")
    if not Conversation.objects.filter(pk=message.conversation_id, participants=user).exists():
        raise NotFound("message not found")
    if message.sender_id == user.pk:
        raise Forbidden("only recipients record receipts")
    watermark = watermark_of(user=user, conversation_id=message.conversation_id)
    if watermark is not None and watermark.implies(state, message.seq):
        metrics.IDEMPOTENCY_HIT.labels("receipt", "db").inc()
        return False
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
