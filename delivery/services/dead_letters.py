"""Writes of dead letters: the database mirror of the broker's dead-letter streams, and
the requeue and discard that the admin and ``manage.py deadletters`` offer."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.utils import timezone
from dramatiq.errors import BrokerConnectionError

from brokers import DeadLetterEntry, DeadLetterNotFound
from delivery.broker import MESSAGES_QUEUE, get_broker
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus, Message

logger = logging.getLogger(__name__)


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
        rows = [_row(queue_name, e) for e in entries if (e.partition, e.dead_letter_id) not in known]
        if rows:
            DeadLetter.objects.bulk_create(rows, ignore_conflicts=True)
            created += len(rows)
    return created


def _row(queue_name: str, entry: DeadLetterEntry) -> DeadLetter:
    """The ``DeadLetter`` row of one dead-letter stream entry."""
    envelope: dict[str, Any] = {}
    message_id = ""
    actor_name = ""
    if entry.message is not None:
        message_id = entry.message.message_id
        actor_name = entry.message.actor_name
        first = entry.message.args[0] if entry.message.args else None
        envelope = (
            {
                "args": list(entry.message.args),
                "kwargs": entry.message.kwargs,
                "options": entry.message.options,
            }
            if not isinstance(first, dict)
            else dict(first)
        )
    else:
        envelope = {"raw": entry.raw_message.decode("utf-8", "replace")}
    dead_lettered_ms = entry.dead_lettered_at_ms or int(time.time() * 1000)
    return DeadLetter(
        queue=queue_name,
        partition=entry.partition,
        dead_letter_id=entry.dead_letter_id,
        stream_id=entry.stream_id,
        message_id=message_id,
        actor_name=actor_name,
        conversation_id=str(envelope.get("conversation_id", "")),
        correlation_id=str(envelope.get("correlation_id", "")),
        seq=entry.seq,
        envelope=envelope,
        reason=entry.reason,
        error=entry.error,
        traceback=entry.traceback,
        attempts=entry.attempts,
        dead_lettered_at=datetime.fromtimestamp(dead_lettered_ms / 1000, UTC),
    )


def dead_letter_requeue(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Put a dead letter back on its original partition (same id, options and ``seq``).

    A message that is already persisted is not requeued (a harmless no-op); returns
    whether it was requeued.

    Raises:
      ServiceUnavailable: Redis is unreachable; nothing changed.
    """
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    message_uuid = _uuid_or_none(dead_letter.message_id)
    broker = get_broker()
    try:
        if message_uuid is not None and Message.objects.filter(pk=message_uuid).exists():
            requeued = False
            broker.discard_dead_letter(dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id)
        else:
            requeued = True
            try:
                broker.requeue_dead_letter(
                    dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id
                )
            except DeadLetterNotFound:
                # Requeued or discarded elsewhere already: record it as done.
                logger.info(
                    "Dead letter %s was no longer in its stream; recorded as requeued",
                    dead_letter,
                    extra={"message_id": dead_letter.message_id, "partition": dead_letter.partition},
                )
    except BrokerConnectionError as error:
        raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    _set_status(dead_letter, DeadLetterStatus.REQUEUED, user)
    _log_admin_action(dead_letter, user, "Requeued" if requeued else "Requeue skipped: already persisted")
    return requeued


def dead_letter_discard(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Drop a dead letter for good; returns False when it was not dead any more.

    Raises:
      ServiceUnavailable: Redis is unreachable; nothing changed.
    """
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    try:
        get_broker().discard_dead_letter(dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id)
    except BrokerConnectionError as error:
        raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    _set_status(dead_letter, DeadLetterStatus.DISCARDED, user)
    _log_admin_action(dead_letter, user, "Discarded")
    return True


def _set_status(dead_letter: DeadLetter, status: str, user: User | None) -> None:
    dead_letter.status = status
    dead_letter.status_changed_by = user if user is not None and user.pk else None
    dead_letter.status_changed_at = timezone.now()
    dead_letter.save(update_fields=["status", "status_changed_by", "status_changed_at"])


def _log_admin_action(dead_letter: DeadLetter, user: User | None, action: str) -> None:
    if user is None or not user.pk:
        return
    LogEntry.objects.log_actions(
        user_id=user.pk, queryset=[dead_letter], action_flag=CHANGE, change_message=action, single_object=True
    )


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
