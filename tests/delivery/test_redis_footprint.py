"""What Redis keeps per message (SPEC §3): while a message is pending, a small record
answering repeats and a pointer to its stream entry, never a copy of the message; once it
is persisted, nothing but a record lingering for the grace period; while dead-lettered,
its key stays answerable until the dead letter is requeued or discarded."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.db import connection

from delivery import services
from delivery.models import Message
from tests.conftest import wait_for
from tests.delivery.conftest import client_for, send

#: Bytes Redis may spend per pending message beyond its stream entry (issue 23's target).
PER_PENDING_MESSAGE_LIMIT = 300


def per_message_keys(redis_client: Any) -> list[bytes]:
    """Idempotency records and the partitions' "where" hashes (message id → stream entry)."""
    return [*redis_client.keys("*:idem:*"), *redis_client.keys("*:where")]


def test_a_pending_message_costs_a_small_record_and_its_place_not_a_copy(api, conversation, redis_client):
    count = 600  # past Redis's compact small-hash encoding, as a real backlog is
    for i in range(count):
        ack = send(api, conversation, "x" * 2000, client_message_id=f"k-{i:03}-" + "y" * 190)

    records = redis_client.keys("*:idem:*")
    [where] = redis_client.keys("*:where")
    assert len(records) == count and redis_client.hlen(where) == count
    used = sum(int(redis_client.memory_usage(key)) for key in records)
    used += int(redis_client.memory_usage(where, samples=0))
    print(f"Redis bytes per pending message beyond its stream entry: {used / count:.0f}")
    assert used / count <= PER_PENDING_MESSAGE_LIMIT
    # Nothing expires while the message is pending, however long that takes.
    assert {redis_client.pttl(key) for key in [*records, where]} == {-1}
    assert ack["state"] == "pending"


def test_once_persisted_only_the_record_lingers_for_the_grace_period(
    api, conversation, run_worker, project_broker, redis_client
):
    ack = send(api, conversation, "hello", client_message_id="k-1")
    run_worker()
    project_broker.join("messages", timeout=10_000)

    assert not redis_client.keys("*:where")
    [record] = redis_client.keys("*:idem:*")
    assert 0 < redis_client.pttl(record) <= settings.IDEMPOTENCY_GRACE_MS
    repeat = api.post(
        "/api/v1/messages",
        {"conversation_id": str(conversation.pk), "content": "hello", "client_message_id": "k-1"},
        format="json",
    )
    assert repeat.status_code == 200 and repeat.json()["message_id"] == ack["message_id"]
    assert repeat.json()["state"] == "persisted"


def test_a_retry_racing_with_the_persistence_never_makes_a_second_message(
    alice, api, conversation, run_worker, project_broker
):
    body = {"conversation_id": str(conversation.pk), "content": "race", "client_message_id": "k-race"}
    first = api.post("/api/v1/messages", body, format="json").json()
    answers: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def retry_until_stopped() -> None:
        client = client_for(alice)
        try:
            while not stop.is_set():
                response = client.post("/api/v1/messages", body, format="json")
                with lock:
                    answers.append(
                        (response.status_code, response.json()["message_id"], response.json()["seq"])
                    )
        finally:
            connection.close()

    threads = [threading.Thread(target=retry_until_stopped) for _ in range(6)]
    for thread in threads:
        thread.start()
    run_worker()  # persists while the retries keep coming
    project_broker.join("messages", timeout=10_000)
    # ... and on for a while after: across the ack and the record's switch to its grace
    wait_for(lambda: len(answers) > 200, timeout=30)
    stop.set()
    for thread in threads:
        thread.join()

    assert {(code, message_id, seq) for code, message_id, seq in answers} == {
        (200, first["message_id"], first["seq"])
    }
    assert Message.objects.filter(conversation=conversation).count() == 1
    assert sum(s.dead_letters for s in project_broker.partition_stats("messages")) == 0


def test_a_dead_lettered_message_keeps_its_key_answerable_until_discarded(
    dead_letters, api, conversation, redis_client
):
    keyed = send(api, conversation, "POISON", client_message_id="k-dead")
    [dead] = dead_letters()

    repeat = api.post(
        "/api/v1/messages",
        {"conversation_id": str(conversation.pk), "content": "POISON", "client_message_id": "k-dead"},
        format="json",
    )
    assert repeat.status_code == 200 and repeat.json()["message_id"] == keyed["message_id"]
    assert repeat.json()["state"] == "dead_lettered"
    assert per_message_keys(redis_client)  # its record and its pointer (now at the dead letter)

    services.dead_letter_discard(dead_letter=dead, user=None)
    assert per_message_keys(redis_client) == []
