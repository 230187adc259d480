"""Bulk requeue or discard of dead letters: paged, paced, resumable.

A redrive walks the matching rows still ``dead`` in primary-key order, one page at a time
(bounded memory whatever the count), does each row's Redis step (safe to repeat) and then
marks the page done in one statement. It is resumable by construction: after a crash, the
same call finds only the rows not marked yet, and a row whose Redis step ran but whose
status was not written is requeued again, which adds nothing for a located message and
at worst delivers a message twice (persistence is idempotent). Requeued messages keep
their ``seq``. The pace is capped (``DEAD_LETTER_REDRIVE_RATE``) so that a redrive of
100,000 messages does not swamp the consumers it feeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone
from dramatiq import Message as DramatiqMessage
from dramatiq.errors import BrokerConnectionError

from brokers import RedisStreamsBroker
from delivery.broker import get_broker
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus
from delivery.services.dead_letters import (
    log_admin_actions,
    persisted_message_ids,
    redis_discard,
    redis_requeue,
    stored_message,
)

#: Rows read and marked per statement.
REDRIVE_PAGE_SIZE = 500

RedriveAction = Literal["requeue", "discard"]


@dataclass(frozen=True, slots=True)
class RedriveProgress:
    """How far a redrive is: rows handled out of those that matched when it started."""

    #: Rows that matched and were still ``dead`` when the redrive started.
    total: int
    #: Requeued (or discarded) so far.
    done: int = 0
    #: Marked without requeueing: their message was persisted already.
    skipped: int = 0

    @property
    def handled(self) -> int:
        return self.done + self.skipped


class Pacer:
    """Holds a caller back so that ``n`` items take at least ``n / rate`` seconds overall
    (the first ``burst`` go at once)."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.sent = 0

    def wait(self, count: int) -> None:
        """Block until ``count`` more items may go."""
        due = self.started + max(0, self.sent + count - self.burst) / self.rate
        delay = due - self.clock()
        if delay > 0:
            self.sleep(delay)
        self.sent += count


def dead_letters_redrive(
    *,
    action: RedriveAction,
    dead_letters: QuerySet[DeadLetter],
    user: User | None,
    rate: int | None = None,
    page_size: int = REDRIVE_PAGE_SIZE,
    progress: Callable[[RedriveProgress], None] | None = None,
) -> RedriveProgress:
    """Requeue or discard every row of ``dead_letters`` that is still ``dead``.

    ``rate`` caps the rows handled per second (default ``DEAD_LETTER_REDRIVE_RATE``);
    ``progress`` is called after each page. Running it again after a crash or an outage
    goes on with the rows not done yet.

    Raises:
      ServiceUnavailable: Redis is unreachable; the rows done so far are marked done.
    """
    if action not in ("requeue", "discard"):
        raise ValueError(f"action must be requeue or discard, not {action!r}")
    rate = rate or settings.DEAD_LETTER_REDRIVE_RATE
    page_size = max(1, min(page_size, rate))  # a page never goes faster than the rate
    # What a page needs, not the error texts and tracebacks (kilobytes a row).
    pending = dead_letters.filter(status=DeadLetterStatus.DEAD).order_by("pk").defer("traceback", "error")
    state = RedriveProgress(total=pending.count())
    pacer = Pacer(rate, burst=page_size)
    broker = get_broker()
    last_pk = 0
    while page := list(pending.filter(pk__gt=last_pk)[:page_size]):
        last_pk = page[-1].pk
        pacer.wait(len(page))
        requeued: list[DeadLetter] = []
        skipped: list[DeadLetter] = []
        try:
            _redrive_page(broker, action, page, requeued, skipped)
        except BrokerConnectionError as error:
            _mark(action, requeued, skipped, user)
            raise ServiceUnavailable(
                f"Redis unreachable after {state.handled + len(requeued) + len(skipped)} of "
                f"{state.total}: {error}"
            ) from None
        done, passed = _mark(action, requeued, skipped, user)
        state = RedriveProgress(total=state.total, done=state.done + done, skipped=state.skipped + passed)
        if progress is not None:
            progress(state)
    return state


def _redrive_page(
    broker: RedisStreamsBroker,
    action: RedriveAction,
    page: list[DeadLetter],
    handled: list[DeadLetter],
    skipped: list[DeadLetter],
) -> None:
    """The Redis steps of one page: ``handled`` and ``skipped`` get the rows done, also
    when a step fails half way. Requeues of rows that carry their message go in one round
    trip per queue; the others (already persisted, or mirrored before rows kept the
    message) one by one."""
    if action == "discard":
        for row in page:
            redis_discard(broker, row)
            handled.append(row)
        return
    persisted = persisted_message_ids(page)
    batches: dict[str, list[tuple[DeadLetter, DramatiqMessage[Any]]]] = {}
    for row in page:
        message = stored_message(row) if row.message_id not in persisted else None
        if message is not None:
            batches.setdefault(row.queue, []).append((row, message))
        elif redis_requeue(broker, row, persisted=row.message_id in persisted):
            handled.append(row)
        else:
            skipped.append(row)
    for queue_name, batch in batches.items():
        broker.requeue_dead_letters(
            queue_name, [(row.partition, row.dead_letter_id, message, row.seq) for row, message in batch]
        )
        handled.extend(row for row, _ in batch)


def _mark(
    action: RedriveAction, handled: list[DeadLetter], skipped: list[DeadLetter], user: User | None
) -> tuple[int, int]:
    """Write the new status of rows whose Redis step ran (only where still ``dead``: a
    concurrent redrive's rows are not counted twice); returns (done, skipped) counts."""
    status = DeadLetterStatus.REQUEUED if action == "requeue" else DeadLetterStatus.DISCARDED
    changed_by = user if user is not None and user.pk else None
    counts = []
    for rows, note in (
        (handled, "Requeued" if action == "requeue" else "Discarded"),
        (skipped, "Requeue skipped: already persisted"),
    ):
        if not rows:
            counts.append(0)
            continue
        marked = DeadLetter.objects.filter(pk__in=[r.pk for r in rows], status=DeadLetterStatus.DEAD).update(
            status=status, status_changed_by=changed_by, status_changed_at=timezone.now()
        )
        log_admin_actions(rows, user, note)
        counts.append(marked)
    return counts[0], counts[1]
