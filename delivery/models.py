"""The delivery domain's tables (SPEC §4)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Now


class Conversation(models.Model):
    """A chat between participants; the unit of ordering (one partition key)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200, blank=True, default="")
    participants = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="conversations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Priority(models.TextChoices):
    """How urgent a message is; carried in the envelope and the enqueue metric."""

    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Message(models.Model):
    """A persisted chat message. Rows are written only by the persist actor."""

    #: UUIDv7 assigned at ingress, so ids sort by ingress time.
    id = models.UUIDField(primary_key=True, editable=False)
    # Indexes and database constraints are few on purpose: each costs on the persist path
    # (docs/decisions/0004-persistence-path.md). The unique (conversation, seq) index
    # serves conversation lookups. The sender was checked as a participant at ingress;
    # deleting a user is protected by the ORM, not by a database constraint.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    #: Inline content; empty when the content was offloaded to storage (see ``payload_key``).
    content = models.TextField(blank=True, default="")
    payload_key = models.CharField(max_length=255, blank=True, default="")
    #: Per-conversation sequence number, strictly increasing in ingress acknowledgement order.
    seq = models.BigIntegerField()
    #: Unique (a constraint, not ``unique=True``, which would add a second LIKE index).
    idempotency_key = models.CharField(max_length=300)
    correlation_id = models.CharField(max_length=100, blank=True, default="")
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    #: When ingress acknowledged the message.
    created_at = models.DateTimeField()
    #: When the database stored the row (set by the database, not by the worker's clock).
    persisted_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_unique_conversation_seq"),
            models.UniqueConstraint(fields=["idempotency_key"], name="message_unique_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.seq}"


class ReceiptState(models.TextChoices):
    """Receipt states; they only move forward: sent → delivered → read."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"


class MessageReceipt(models.Model):
    """One state a recipient reported for one message (one row per state reached).

    SENT is implied by the persisted message and no longer written (rows written before
    are still read); most clients report receipts through the conversation's
    :class:`ReadWatermark` instead, and a message's receipts as the API shows them
    combine both (``delivery/receipt_states.py``).
    """

    # The unique (message, user, state) and (user, state) indexes cover both foreign keys.
    # Receipts are written only for a message and a user just checked, so the database
    # does not check them again.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="receipts", db_index=False, db_constraint=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    state = models.CharField(max_length=10, choices=ReceiptState.choices)
    timestamp = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["message", "user", "state"], name="receipt_unique_message_user_state"
            ),
        ]
        indexes = [models.Index(fields=["user", "state"])]

    def __str__(self) -> str:
        return f"{self.message_id} {self.user_id} {self.state}"


class ReadWatermark(models.Model):
    """How far one participant has received and read one conversation: every message
    up to ``delivered_seq`` is delivered to ``user``, every message up to ``read_seq`` is
    read (so ``read_seq <= delivered_seq``). One row per (conversation, user), moved
    forward only, in one statement (``delivery/sql.py``); Slack's ``last_read``,
    Discord's read states and Matrix's receipts work the same way, so receipts cost a
    row per reader, not a row per recipient per message."""

    # The unique (conversation, user) index serves the conversation's foreign key; the
    # user's own index serves deleting a user.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="watermarks", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    #: Every message of the conversation up to this ``seq`` is read (0: none).
    read_seq = models.BigIntegerField(default=0)
    #: When ``read_seq`` last moved forward (the database's clock); None while it is 0.
    read_at = models.DateTimeField(null=True, blank=True)
    #: Every message up to this ``seq`` is delivered (0: none); never below ``read_seq``.
    delivered_seq = models.BigIntegerField(default=0)
    #: When ``delivered_seq`` last moved forward; None while it is 0.
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "user"], name="watermark_unique_conversation_user"
            ),
            models.CheckConstraint(
                condition=models.Q(read_seq__gte=0, delivered_seq__gte=models.F("read_seq")),
                name="watermark_read_implies_delivered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id} {self.user_id} read {self.read_seq} delivered {self.delivered_seq}"


class DeadLetterStatus(models.TextChoices):
    """Where a dead letter stands."""

    DEAD = "dead"
    REQUEUED = "requeued"
    DISCARDED = "discarded"


class DeadLetter(models.Model):
    """The admin's view of one entry of the broker's dead-letter streams."""

    queue = models.CharField(max_length=100)
    partition = models.PositiveIntegerField()
    #: Id of the entry in the partition's dead-letter stream; unique per queue and partition.
    dead_letter_id = models.CharField(max_length=40)
    #: Id of the original entry in the partition's stream.
    stream_id = models.CharField(max_length=40, blank=True, default="")
    message_id = models.CharField(max_length=64, db_index=True)
    actor_name = models.CharField(max_length=200, blank=True, default="")
    conversation_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    correlation_id = models.CharField(max_length=100, blank=True, default="")
    seq = models.BigIntegerField(null=True, blank=True)
    envelope = models.JSONField(default=dict)
    #: The message as the broker encoded it (id, actor, options): with ``seq``, all that a
    #: requeue or a discard needs once the dead-letter stream entry is trimmed.
    message_data = models.BinaryField(default=b"", editable=False)
    reason = models.CharField(max_length=50)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    dead_lettered_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=DeadLetterStatus.choices, default=DeadLetterStatus.DEAD)
    status_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status_changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-dead_lettered_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "partition", "dead_letter_id"], name="deadletter_unique_stream_entry"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "reason"]),
            # The admin's newest-first pages and the retention sweep, at 100,000s of rows.
            models.Index(fields=["-dead_lettered_at", "-id"], name="deadletter_newest_first"),
            models.Index(fields=["status", "status_changed_at"], name="deadletter_status_changed"),
        ]

    def __str__(self) -> str:
        return f"{self.queue}/{self.partition}/{self.dead_letter_id}"
