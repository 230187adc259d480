"""Batch ingress: many messages, in any conversations the sender takes part in, for one
SQL query and one Redis round trip (one enqueue script call per partition touched).

Each message is accepted or refused on its own, exactly as a single POST would be; the
answers keep the request's order, and messages of one conversation get increasing ``seq``
in request order.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.db import connection
from dramatiq.errors import BrokerConnectionError

from brokers import NotReplicated
from delivery import metrics, sql
from delivery.broker import get_broker
from delivery.errors import ApplicationError, NotFound
from delivery.idempotency import IngressKey
from delivery.models import Conversation, Message
from delivery.services.ingest import (
    IngestResult,
    IngressItem,
    answer,
    ingress_key,
    prepare,
    queue_unreachable,
    replay_persisted,
)

#: One item's outcome: its answer, or the error a single POST would have answered with.
Outcome = IngestResult | ApplicationError


def messages_ingest(*, sender: User, items: list[IngressItem], correlation_id: str) -> list[Outcome]:
    """Acknowledge each of ``items`` as :func:`message_ingest` would, in one SQL query and
    one Redis round trip; the outcomes are in the items' order."""
    started = time.perf_counter()
    outcomes: list[Outcome | None] = [None] * len(items)
    keys: dict[int, IngressKey] = {}
    for i, item in enumerate(items):
        try:
            keys[i] = ingress_key(sender, item)
        except ApplicationError as error:
            outcomes[i] = error
    if keys:
        _check(sender, items, keys, outcomes)
    prepared = {
        i: prepare(sender, items[i], key, correlation_id) for i, key in keys.items() if outcomes[i] is None
    }
    if prepared:
        try:
            sent = get_broker().enqueue_many([p.message for p in prepared.values()])
        except (BrokerConnectionError, NotReplicated) as error:
            first = next(iter(prepared.values()))
            unreachable = queue_unreachable(error, first.message.message_id, first.item.conversation_id)
            sent = []
            for i in prepared:
                outcomes[i] = unreachable
        for (i, ready), message in zip(prepared.items(), sent, strict=False):
            try:
                outcomes[i] = answer(ready, message, correlation_id)
            except ApplicationError as error:
                outcomes[i] = error
    elapsed_ms = (time.perf_counter() - started) * 1000
    done: list[Outcome] = []
    for outcome in outcomes:
        assert outcome is not None
        status = outcome.code if isinstance(outcome, ApplicationError) else _status(outcome)
        metrics.observe_ingress(status, elapsed_ms)
        done.append(outcome)
    return done


def _status(result: IngestResult) -> str:
    return "duplicate" if result.idempotent_hit else "accepted"


def _check(
    sender: User, items: list[IngressItem], keys: dict[int, IngressKey], outcomes: list[Outcome | None]
) -> None:
    """Refuse items of conversations the sender is not in, and answer repeats of persisted
    messages, from one query."""
    conversations = sorted({items[i].conversation_id for i in keys})
    persisted_keys = sorted({key.persisted_key for key in keys.values() if key.persisted_key})
    params: list[Any] = [sender.pk]
    params += [sql.prep(Conversation, "id", UUID(c)) for c in conversations]
    params += persisted_keys
    with connection.cursor() as cursor:
        cursor.execute(sql.batch_check(len(conversations), len(persisted_keys)), params)
        rows = cursor.fetchall()
    member_of = {str(UUID(str(value))) for kind, value, _ in rows if kind == "p"}
    holders = {value: message_id for kind, value, message_id in rows if kind == "k"}
    persisted = Message.objects.in_bulk([UUID(m) for m in holders.values()]) if holders else {}
    for i, key in keys.items():
        if items[i].conversation_id not in member_of:
            outcomes[i] = NotFound("conversation not found")
        elif key.persisted_key in holders:
            try:
                outcomes[i] = replay_persisted(persisted[UUID(holders[key.persisted_key])], key)
            except ApplicationError as error:
                outcomes[i] = error
