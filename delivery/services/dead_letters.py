"""Requeue and discard of one dead letter, as the admin and ``manage.py deadletters`` offer.

The ``DeadLetter`` row is the source of truth: it keeps the message as the broker encoded
it (``message_data``) and its ``seq``, so a requeue or a discard works the same whether or
not the dead-letter stream still holds the entry (the mirror trims what it stored; see
``delivery.services.dead_letter_mirror``). The Redis step comes first and is safe to repeat;
the row's status changes after it, so a crash in between leaves the row ``dead`` and the
next requeue or discard finishes the job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.utils import timezone
from dramatiq import Message as DramatiqMessage
from dramatiq.errors import BrokerConnectionError

from brokers import DeadLetterNotFound, RedisStreamsBroker
from delivery.broker import get_broker
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus, Message

logger = logging.getLogger(__name__)


def dead_letter_requeue(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Put a dead letter back on its original partition (same id, options and ``seq``).

    A message that is already persisted is not requeued (a harmless no-op); returns
    whether it was requeued.

    Raises:
      ServiceUnavailable: Redis is unreachable; nothing changed.
    """
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    try:
        persisted = bool(persisted_message_ids([dead_letter]))
        requeued = redis_requeue(get_broker(), dead_letter, persisted=persisted)
    except BrokerConnectionError as error:
        raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    _set_status(dead_letter, DeadLetterStatus.REQUEUED, user)
    log_admin_actions([dead_letter], user, "Requeued" if requeued else "Requeue skipped: already persisted")
    return requeued


def dead_letter_discard(*, dead_letter: DeadLetter, user: User | None) -> bool:
    """Drop a dead letter for good; returns False when it was not dead any more.

    Raises:
      ServiceUnavailable: Redis is unreachable; nothing changed.
    """
    if dead_letter.status != DeadLetterStatus.DEAD:
        return False
    try:
        redis_discard(get_broker(), dead_letter)
    except BrokerConnectionError as error:
        raise ServiceUnavailable(f"Redis unreachable: {error}") from None
    _set_status(dead_letter, DeadLetterStatus.DISCARDED, user)
    log_admin_actions([dead_letter], user, "Discarded")
    return True


def redis_requeue(broker: RedisStreamsBroker, dead_letter: DeadLetter, *, persisted: bool) -> bool:
    """The Redis half of a requeue (safe to repeat): back at the tail of its partition with
    its ``seq``, or, when it is ``persisted`` already, only its leftovers deleted.
    Returns whether the message was requeued."""
    message = stored_message(dead_letter)
    if persisted:
        broker.discard_dead_letter(
            dead_letter.queue, dead_letter.partition, dead_letter.dead_letter_id, message=message
        )
        return False
    try:
        broker.requeue_dead_letter(
            dead_letter.queue,
            dead_letter.partition,
            dead_letter.dead_letter_id,
            message=message,
            seq=dead_letter.seq if message is not None else None,
        )
    except DeadLetterNotFound:
        # Neither the row nor the stream has the message: undecodable, and trimmed already.
        logger.error(
            "Dead letter %s cannot be requeued: its message is not readable; recorded as requeued",
            dead_letter,
            extra={"message_id": dead_letter.message_id, "partition": dead_letter.partition},
        )
    return True


def redis_discard(broker: RedisStreamsBroker, dead_letter: DeadLetter) -> None:
    """The Redis half of a discard (safe to repeat): the entry, if still there, the
    message's idempotency record and its place in the "where" hash."""
    broker.discard_dead_letter(
        dead_letter.queue,
        dead_letter.partition,
        dead_letter.dead_letter_id,
        message=stored_message(dead_letter),
    )


def stored_message(dead_letter: DeadLetter) -> DramatiqMessage[Any] | None:
    """The message as the broker encoded it, from the row (None when the row predates
    ``message_data``, or the entry was not a decodable message)."""
    data = bytes(dead_letter.message_data or b"")
    if not data:
        return None
    try:
        return DramatiqMessage.decode(data)
    except Exception:  # the broker dead-letters undecodable entries too: kept raw
        return None


def persisted_message_ids(dead_letters: Iterable[DeadLetter]) -> set[str]:
    """Message ids of these dead letters whose message is persisted already."""
    ids = {u for u in (_uuid_or_none(d.message_id) for d in dead_letters) if u is not None}
    if not ids:
        return set()
    return {str(pk) for pk in Message.objects.filter(pk__in=ids).values_list("pk", flat=True)}


def log_admin_actions(dead_letters: list[DeadLetter], user: User | None, action: str) -> None:
    """Record who did what in the admin's history (only for a real user)."""
    if user is None or not user.pk or not dead_letters:
        return
    if len(dead_letters) == 1:
        LogEntry.objects.log_actions(
            user_id=user.pk,
            queryset=dead_letters,
            action_flag=CHANGE,
            change_message=action,
            single_object=True,
        )
    else:  # one INSERT for the page
        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=dead_letters, action_flag=CHANGE, change_message=action
        )


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
