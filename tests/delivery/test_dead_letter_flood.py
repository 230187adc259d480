"""A dead-letter flood (issue 21): a bad deploy makes PostgreSQL refuse every message, so
with ``STREAM_MAX_RETRIES=0`` every one of 20,000 messages over many partitions is
dead-lettered. Every one must reach the ``DeadLetter`` table in one mirror pass, Redis must
give back what the dead-letter streams held, the admin must still page through them, and
``deadletters requeue --all`` after the fix must persist every one at its ``seq``.

The messages go through batch ingress (``services.messages_ingest``: the real envelopes,
idempotency records and ``seq``) without HTTP, and are dead-lettered by the broker's own
path, run by a real in-process worker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from delivery import services
from delivery.admin.dead_letters import DeadLetterAdmin
from delivery.models import Conversation, DeadLetter, Message
from delivery.services import IngressItem

#: Dead letters in the flood, and the conversations (so partitions) they are spread over.
FLOOD = 20_000
CONVERSATIONS = 80

#: The bound this test states: one mirror pass takes every dead letter, in at most this long
#: (on a loaded 2-core CI machine; measured: see the printed figure).
MIRROR_BOUND_S = 60.0


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """20,000 failures log 60,000 records with tracebacks: formatting them would cost more
    than the flood itself."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture
def refusing_database(transactional_db: None) -> Iterator[None]:
    """PostgreSQL refuses every message row (the bad deploy) until the test ends."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION refuse_every_message() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'bad deploy: message rows refused'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_every_message BEFORE INSERT ON delivery_message "
            "FOR EACH ROW EXECUTE FUNCTION refuse_every_message()"
        )
    yield
    fix_database()
    with connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS refuse_every_message()")


def fix_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS refuse_every_message ON delivery_message")


def _dead_stream_bytes(redis_client, broker) -> int:
    keys = [broker.keys("messages", p).dead for p in range(broker.partitions)]
    return sum(redis_client.memory_usage(k) or 0 for k in keys)


def _footprint_bytes(redis_client) -> int:
    """Bytes of every key of the tests' Redis database."""
    return sum(redis_client.memory_usage(k) or 0 for k in redis_client.scan_iter(count=1000))


def test_a_flood_of_dead_letters_is_mirrored_whole_frees_redis_pages_in_the_admin_and_requeues_in_order(
    refusing_database, quiet_logs, alice, bob, project_broker, run_worker, redis_client, monkeypatch
):
    # Given a flood: every message of many conversations refused by the database
    actor_options = project_broker.actors["persist_messages"].options
    monkeypatch.setitem(actor_options, "max_retries", 0)
    # One message per run: a refused batch of 10 would run again entry by entry anyway.
    monkeypatch.setitem(actor_options, "batch_size", 1)
    conversations = []
    for _ in range(CONVERSATIONS):
        conversation = Conversation.objects.create()
        conversation.participants.add(alice, bob)
        conversations.append(str(conversation.pk))
    started = time.monotonic()
    for first in range(0, FLOOD, 100):
        items = [
            IngressItem(conversations[i % CONVERSATIONS], content=f"flood {i}", client_key=f"k{i}")
            for i in range(first, first + 100)
        ]
        outcomes = services.messages_ingest(sender=alice, items=items, correlation_id="flood")
        assert all(isinstance(o, services.IngestResult) for o in outcomes)
    ingested_s = time.monotonic() - started
    run_worker(threads=8)
    project_broker.join("messages", timeout=300_000)
    dead_lettered_s = time.monotonic() - started - ingested_s
    backlog = project_broker.dead_letter_backlog("messages")
    assert sum(b.length for b in backlog) == FLOOD
    assert sum(1 for b in backlog if b.length > 1000) >= 8  # past the old 1,000-per-partition page
    streams_before = _dead_stream_bytes(redis_client, project_broker)
    footprint_before = _footprint_bytes(redis_client)

    # When the mirror runs once
    started = time.monotonic()
    assert services.dead_letters_mirror() == FLOOD
    mirror_s = time.monotonic() - started

    # Then every dead letter is in the table, once, within the stated bound ...
    assert mirror_s < MIRROR_BOUND_S
    assert DeadLetter.objects.count() == FLOOD
    per_conversation = Counter(DeadLetter.objects.values_list("conversation_id", flat=True))
    assert set(per_conversation.values()) == {FLOOD // CONVERSATIONS}
    # ... and Redis gave back the dead-letter streams: what stays per dead letter is its
    # idempotency record and "where" field, until it is requeued or discarded.
    assert {b.length for b in project_broker.dead_letter_backlog("messages")} == {0}
    streams_after = _dead_stream_bytes(redis_client, project_broker)
    footprint_after = _footprint_bytes(redis_client)
    assert streams_after < 1024 * project_broker.partitions
    assert footprint_after / FLOOD < 400
    assert services.dead_letters_mirror() == 0

    # And the admin still answers, paged, with one COUNT and LIMITed reads
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="pw"))
    with CaptureQueriesContext(connection) as queries:
        started = time.monotonic()
        listing = admin.get("/admin/delivery/deadletter/")
        admin_s = time.monotonic() - started
    assert listing.status_code == 200
    assert f"{FLOOD} dead letters".encode() in listing.content
    per_page = DeadLetterAdmin.list_per_page
    assert listing.content.count(b'name="_selected_action"') == per_page
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "delivery_deadletter"' in q["sql"]]
    assert reads and all(("LIMIT" in q) or ("COUNT(" in q) or ("DISTINCT" in q) for q in reads), reads
    last_page = admin.get(f"/admin/delivery/deadletter/?p={FLOOD // per_page}")
    assert last_page.status_code == 200 and last_page.content.count(b'name="_selected_action"') == per_page

    # When the deploy is fixed and every dead letter is requeued
    fix_database()
    out = StringIO()
    started = time.monotonic()
    call_command("deadletters", "requeue", "--all", "--rate", "1000000", stdout=out)
    requeue_s = time.monotonic() - started
    assert f"Requeued {FLOOD} of {FLOOD} dead letter(s)." in out.getvalue()
    project_broker.join("messages", timeout=300_000)

    # Then every one is persisted, once, at its original seq
    persisted = {str(pk): seq for pk, seq in Message.objects.values_list("pk", "seq")}
    assert persisted == dict(DeadLetter.objects.values_list("message_id", "seq"))
    assert len(persisted) == FLOOD
    print(
        f"\nflood of {FLOOD}: ingest {ingested_s:.1f}s, dead-lettered {dead_lettered_s:.1f}s, "
        f"mirror {mirror_s:.1f}s ({FLOOD / mirror_s:.0f}/s), admin list {admin_s * 1000:.0f}ms, "
        f"requeue --all {requeue_s:.1f}s; dead-letter streams {streams_before / FLOOD:.0f} -> "
        f"{streams_after} bytes in all; Redis per dead letter {footprint_before / FLOOD:.0f} -> "
        f"{footprint_after / FLOOD:.0f} bytes ({footprint_after / footprint_before:.2f}x)"
    )
