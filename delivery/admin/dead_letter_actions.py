"""Requeue and discard, as the admin runs them: over chosen rows, or over every row that
matches the list's filter; one outcome, one message to the operator."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import QuerySet

from delivery import services
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus

logger = logging.getLogger(__name__)


class Operation(enum.StrEnum):
    """What an operator does to dead letters."""

    #: Back onto the original partition, same message id and ``seq``.
    REQUEUE = "requeue"
    #: Dropped for good (the message shows as ``discarded``).
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an operation over some dead letters went."""

    operation: Operation
    #: Requeued or discarded.
    done: int
    #: Not dead any more (requeued or discarded already) or, for a requeue, already persisted.
    skipped: int
    #: Why the run stopped early (Redis unreachable), or "".
    stopped: str = ""
    #: Rows handed to a redrive running in the background (0: it ran within the request).
    background: int = 0

    @property
    def level(self) -> int:
        """The admin message level: a warning as soon as anything was skipped or stopped."""
        if self.background:
            return messages.INFO
        if self.stopped:
            return messages.ERROR
        return messages.WARNING if self.skipped else messages.SUCCESS

    def __str__(self) -> str:
        if self.background:
            return (
                f"{self.operation.capitalize()} of {self.background} dead letter(s) started in the "
                f"background at {settings.DEAD_LETTER_REDRIVE_RATE}/s; refresh the list to follow it. "
                "If it stops (a restart, Redis away), run it again: it goes on with the rows still dead."
            )
        verb = "Requeued" if self.operation is Operation.REQUEUE else "Discarded"
        text = f"{verb} {self.done} dead letter(s)"
        if self.skipped:
            text += f"; {self.skipped} skipped: already requeued or discarded" + (
                ", or their message already persisted" if self.operation is Operation.REQUEUE else ""
            )
        if self.stopped:
            text += f". Stopped: {self.stopped}"
        return text + "."


def dead_letters_apply(
    dead_letters: Iterable[DeadLetter], *, operation: Operation, user: User | None
) -> Outcome:
    """Requeue or discard each dead letter through the services; rows that are not dead
    any more are counted as skipped. Stops at the first Redis outage."""
    done = skipped = 0
    service = services.dead_letter_requeue if operation is Operation.REQUEUE else services.dead_letter_discard
    try:
        for dead_letter in dead_letters:
            if service(dead_letter=dead_letter, user=user):
                done += 1
            else:
                skipped += 1
    except ServiceUnavailable as error:
        return Outcome(operation, done, skipped, stopped=str(error))
    return Outcome(operation, done, skipped)


#: Rows a request redrives itself; a larger match runs in a background thread (at
#: ``DEAD_LETTER_REDRIVE_RATE``, 500/s by default, 100,000 rows take minutes).
INLINE_REDRIVE_LIMIT = 2_000


def dead_letters_matching_apply(
    queryset: QuerySet[DeadLetter], *, operation: Operation, user: User | None
) -> Outcome:
    """Requeue or discard every dead row of ``queryset`` (the list's filter, up to hundreds
    of thousands of rows) through the paged, rate-limited, resumable bulk redrive
    (:func:`delivery.services.dead_letters_redrive`). Up to :data:`INLINE_REDRIVE_LIMIT`
    rows within the request; more in a background thread, the answer saying so."""
    matching = queryset.filter(status=DeadLetterStatus.DEAD)
    total = matching.count()
    if total > INLINE_REDRIVE_LIMIT:
        threading.Thread(
            target=_redrive_in_background,
            args=(matching, operation, user),
            name=f"dead-letter-{operation}",
            daemon=True,
        ).start()
        return Outcome(operation, 0, 0, background=total)
    reached = services.RedriveProgress(total=total)

    def note(progress: services.RedriveProgress) -> None:
        nonlocal reached
        reached = progress

    try:
        reached = services.dead_letters_redrive(
            action=operation.value, dead_letters=matching, user=user, progress=note
        )
    except ServiceUnavailable as error:
        return Outcome(operation, reached.done, reached.skipped, stopped=str(error))
    return Outcome(operation, reached.done, reached.skipped)


def _redrive_in_background(matching: QuerySet[DeadLetter], operation: Operation, user: User | None) -> None:
    try:
        progress = services.dead_letters_redrive(action=operation.value, dead_letters=matching, user=user)
        logger.info("Dead-letter %s of the admin's filter done: %s", operation, progress)
    except Exception:
        logger.exception("Dead-letter %s of the admin's filter stopped; run it again to go on", operation)
    finally:
        connection.close()  # this thread's own database connection
