"""Writes of the persist actor: a batch of messages in one statement, exactly once."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connection

from delivery import metrics, sql
from delivery.errors import IdempotencyKeyConflict
from delivery.models import Message
from delivery.sql import Envelope


@dataclass(frozen=True, slots=True)
class PersistOutcome:
    """What one persisted batch did."""

    inserted: int
    duplicates: int


def messages_persist(*, envelopes: list[Envelope]) -> PersistOutcome:
    """Insert a batch of messages (each with its ``seq``) in one transaction.

    One multi-row ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING``;
    rows already there are idempotent hits, not errors. No receipt row per recipient:
    SENT is implied by the persisted message, so the cost does not grow with the
    conversation's size.

    Raises:
      IdempotencyKeyConflict: a *different* message already holds an envelope's key.
    """
    started = time.perf_counter()
    status = "error"
    try:
        outcome = _persist(envelopes)
        status = "success" if outcome.duplicates == 0 else "duplicate"
        return outcome
    finally:
        metrics.PERSISTENCE_DURATION.labels(status).observe((time.perf_counter() - started) * 1000)


def _insert_postgresql(cursor: Any, envelopes: list[Envelope]) -> list[UUID]:
    """One statement. The batch travels as one JSON document (a row per message):
    encoding it is one C call, where array parameters were quoted element by element
    in Python."""
    document = json.dumps([sql.message_json_row(e) for e in envelopes])
    cursor.execute(sql.insert_messages_postgresql(), [document])
    return [row[0] for row in cursor.fetchall()]


def _insert_portable(cursor: Any, envelopes: list[Envelope]) -> list[UUID]:
    """The same for other databases (SQLite in the quick start)."""
    params = [p for e in envelopes for p in sql.message_params(e)]
    cursor.execute(sql.insert_messages_portable(len(envelopes)), params)
    return [UUID(str(row[0])) for row in cursor.fetchall()]


def _persist(envelopes: list[Envelope]) -> PersistOutcome:
    if not envelopes:
        return PersistOutcome(0, 0)
    # One statement is atomic on its own: one round trip, no BEGIN and COMMIT.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            inserted = _insert_postgresql(cursor, envelopes)
        else:
            inserted = _insert_portable(cursor, envelopes)
    if len(inserted) < len(envelopes):
        _check_skipped_are_repeats(envelopes, set(inserted))
    duplicates = len(envelopes) - len(inserted)
    if duplicates:
        metrics.IDEMPOTENCY_HIT.labels("persistence", "db").inc(duplicates)
    # Where the pending messages were is forgotten with the ack (the ``locate`` option).
    return PersistOutcome(inserted=len(inserted), duplicates=duplicates)


def _check_skipped_are_repeats(envelopes: list[Envelope], inserted: set[UUID]) -> None:
    """Rows already there are repeats of the same messages (hits), unless another
    message holds the key: then the batch fails (the rows it inserted are kept and
    count as hits when it is split and retried) and that message is dead-lettered."""
    skipped = [e for e in envelopes if UUID(e["message_id"]) not in inserted]
    holders = dict(
        Message.objects.filter(idempotency_key__in=[e["idempotency_key"] for e in skipped]).values_list(
            "idempotency_key", "id"
        )
    )
    for e in skipped:
        if holders.get(e["idempotency_key"]) != UUID(e["message_id"]):
            raise IdempotencyKeyConflict(
                f"message {e['message_id']} carries key {e['idempotency_key']!r}, "
                f"already used by message {holders.get(e['idempotency_key'])}"
            )
