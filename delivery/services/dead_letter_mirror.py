"""The database mirror of the broker's dead-letter streams, and the retention sweep.

Each partition's dead-letter stream holds only what is not in the ``DeadLetter`` table yet:
the mirror reads it in pages, stores each page (one statement, idempotent on the stream
entry id) and then trims the stream up to the page's last entry. The start of the stream
is so the cursor, kept beside it in Redis; within a pass the mirror reads on from the last
entry it stored. A crash between the insert and the trim makes the next pass read the page
again, which stores nothing twice. Redis thus holds dead letters only until they are
mirrored; the table is the source of truth for requeue and discard.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from brokers import DeadLetterEntry
from delivery.broker import MESSAGES_QUEUE, get_broker
from delivery.models import DeadLetter, DeadLetterStatus

#: Dead-letter entries read, stored and trimmed per partition in one step: bounds the
#: mirror's memory and the size of one insert.
MIRROR_PAGE_SIZE = 1000

#: Rows deleted per statement by the retention sweep (short locks, bounded memory).
PURGE_BATCH_SIZE = 5000


def dead_letters_mirror(*, page_size: int = MIRROR_PAGE_SIZE) -> int:
    """Copy the entries of the broker's dead-letter streams into ``DeadLetter`` rows and
    trim them from the streams, page by page, until every stream is caught up.

    Safe to run twice or side by side: rows are unique per stream entry. Returns the
    number of new rows.
    """
    broker = get_broker()
    created = 0
    for queue_name in sorted(broker.get_declared_queues() | {MESSAGES_QUEUE}):
        # Only partitions with something to mirror (one round trip when all are caught up);
        # one page per partition in turn: a flooded partition does not starve the others.
        cursors: dict[int, str | None] = dict.fromkeys(
            b.partition for b in broker.dead_letter_backlog(queue_name) if b.length
        )
        while cursors:
            for partition, after in list(cursors.items()):
                entries = broker.dead_letters(queue_name, partition=partition, after=after, count=page_size)
                if entries:
                    created += _store(queue_name, partition, entries)
                    cursors[partition] = entries[-1].dead_letter_id
                    broker.trim_dead_letters(queue_name, partition, entries[-1].dead_letter_id)
                if len(entries) < page_size:
                    del cursors[partition]
    return created


def dead_letters_purge(*, older_than: timedelta, batch_size: int = PURGE_BATCH_SIZE) -> int:
    """Delete the rows of dead letters requeued or discarded more than ``older_than``
    ago (``DEAD_LETTER_RETENTION_DAYS``); rows still ``dead`` are kept. Returns how many."""
    cutoff = timezone.now() - older_than
    expired = DeadLetter.objects.filter(
        status__in=[DeadLetterStatus.REQUEUED, DeadLetterStatus.DISCARDED], status_changed_at__lt=cutoff
    )
    deleted = 0
    while ids := list(expired.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        deleted += DeadLetter.objects.filter(pk__in=ids).delete()[0]
    return deleted


def _store(queue_name: str, partition: int, entries: list[DeadLetterEntry]) -> int:
    """Insert one page of entries; returns how many rows are new."""
    ids = [e.dead_letter_id for e in entries]
    known = DeadLetter.objects.filter(queue=queue_name, partition=partition, dead_letter_id__in=ids).count()
    # A row mirrored before rows kept the encoded message gets it now, before its entry
    # is trimmed; a row stored already (a page read again after a crash) is unchanged.
    DeadLetter.objects.bulk_create(
        [_row(queue_name, e) for e in entries],
        update_conflicts=True,
        unique_fields=["queue", "partition", "dead_letter_id"],
        update_fields=["message_data"],
    )
    return len(entries) - known


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
        message_data=entry.raw_message,
        reason=entry.reason,
        error=entry.error,
        traceback=entry.traceback,
        attempts=entry.attempts,
        dead_lettered_at=datetime.fromtimestamp(dead_lettered_ms / 1000, UTC),
    )
