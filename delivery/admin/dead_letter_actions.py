"""Requeue and discard, as the admin runs them: over chosen rows, or over every row that
matches the list's filter; one outcome, one message to the operator."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import QuerySet

from delivery import services
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus


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

    @property
    def level(self) -> int:
        """The admin message level: a warning as soon as anything was skipped or stopped."""
        if self.stopped:
            return messages.ERROR
        return messages.WARNING if self.skipped else messages.SUCCESS

    def __str__(self) -> str:
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


def dead_letters_matching_apply(
    queryset: QuerySet[DeadLetter], *, operation: Operation, user: User | None
) -> Outcome:
    """Requeue or discard every dead row of ``queryset`` (the list's filter, thousands of
    rows): streamed, one at a time. The one place to swap for a rate-limited bulk redrive."""
    matching = queryset.filter(status=DeadLetterStatus.DEAD).order_by("pk")
    return dead_letters_apply(matching.iterator(chunk_size=500), operation=operation, user=user)
