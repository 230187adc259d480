"""Persistence through the real actor and worker, reads, receipts and access rules."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from rest_framework.test import APIClient

from brokers import RedisStreamsBroker
from delivery import selectors, services
from delivery.errors import IdempotencyKeyConflict
from delivery.models import Conversation, DeadLetter, Message, MessageReceipt, ReceiptState
from delivery.services import persistence
from tests.conftest import wait_for
from tests.delivery.conftest import client_for, make_user, send


def test_happy_path_message_goes_from_pending_to_persisted_with_implied_sent_receipts(
    api, conversation, bob, run_worker, project_broker
):
    ack = send(api, conversation, "hello bob", client_message_id="c1")
    pending = api.get(f"/api/v1/messages/{ack['message_id']}")
    assert pending.status_code == 200 and pending.json()["state"] == "pending"
    assert pending.json()["content"] == "hello bob" and pending.json()["persisted_at"] is None
    assert pending.json()["seq"] == ack["seq"] == 1

    run_worker()
    project_broker.join("messages", timeout=10_000)

    persisted = api.get(f"/api/v1/messages/{ack['message_id']}").json()
    assert persisted["state"] == "persisted"
    assert (persisted["seq"], persisted["sender"], persisted["content"]) == (1, "alice", "hello bob")
    assert persisted["persisted_at"] is not None
    # SENT is implied by the persisted message, at its persistence, and is no row.
    assert persisted["receipts"] == [{"user": "bob", "state": "sent", "timestamp": persisted["persisted_at"]}]
    assert not MessageReceipt.objects.exists()
    row = Message.objects.get(pk=ack["message_id"])
    assert row.idempotency_key == f"c:{row.sender_id}:{conversation.pk}:c1"
    assert row.correlation_id == ack["correlation_id"]
    assert all(s.length == 0 for s in project_broker.partition_stats("messages"))
    assert selectors.pending_message(ack["message_id"]) is None  # deleted with the ack


def test_conversation_rows_are_complete_unique_and_persisted_in_seq_order(
    api, alice, bob, run_worker, project_broker
):
    conversations = [
        services.conversation_create(creator=alice, participant_usernames=["bob"]) for _ in range(20)
    ]
    acked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i in range(50):
        for conversation in conversations:
            ack = send(api, conversation, f"{conversation.pk}:{i}")
            acked[str(conversation.pk)].append((ack["seq"], ack["message_id"]))
    run_worker(threads=8)
    project_broker.join("messages", timeout=60_000)

    with connection.cursor() as cursor:
        cursor.execute("SELECT conversation_id, seq, id FROM delivery_message ORDER BY persisted_at, seq")
        rows = cursor.fetchall()
    assert len(rows) == 1000
    by_conversation: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for conversation_id, seq, message_id in rows:
        by_conversation[str(conversation_id)].append((seq, str(message_id)))
    for conversation_id, persisted in by_conversation.items():
        assert persisted == acked[conversation_id]  # persistence order is seq order
    assert DeadLetter.objects.count() == 0


def test_persisting_the_same_envelope_twice_is_an_idempotent_hit(alice, conversation):
    envelope = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": str(conversation.pk),
        "sender_id": alice.pk,
        "created_at": 1_700_000_000_000,
        "idempotency_key": "c:1:dup",
        "correlation_id": "cid",
        "priority": "normal",
        "content": "x",
        "seq": 1,
    }
    first = services.messages_persist(envelopes=[envelope])
    again = services.messages_persist(envelopes=[envelope, {**envelope}])
    assert (first.inserted, first.duplicates) == (1, 0)
    assert (again.inserted, again.duplicates) == (0, 2)
    assert Message.objects.count() == 1
    assert not MessageReceipt.objects.exists()


def test_the_persisted_row_holds_the_envelope_exactly(alice, bob, conversation):
    message_id = str(uuid.uuid4())
    content = 'quotes " \' backslash \\ newline \n tab \t unicode é ✓ 😀 {"json": [1]}'
    envelope = {
        "message_id": message_id,
        "conversation_id": str(conversation.pk),
        "sender_id": alice.pk,
        "created_at": 1_700_000_000_123,
        "idempotency_key": "c:1:exact ✓",
        "correlation_id": "cid-1",
        "priority": "urgent",
        "content": content,
        "seq": 7,
    }
    services.messages_persist(envelopes=[envelope])
    row = Message.objects.get(pk=message_id)
    assert (row.conversation_id, row.sender_id, row.content, row.payload_key, row.seq) == (
        conversation.pk,
        alice.pk,
        content,
        "",
        7,
    )
    assert (row.idempotency_key, row.correlation_id, row.priority) == ("c:1:exact ✓", "cid-1", "urgent")
    assert row.created_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert not MessageReceipt.objects.filter(message_id=message_id).exists()  # SENT is implied


def test_a_different_message_with_a_used_key_is_a_conflict_not_a_silent_drop(alice, conversation):
    base = {
        "conversation_id": str(conversation.pk),
        "sender_id": alice.pk,
        "created_at": 1_700_000_000_000,
        "idempotency_key": "c:1:reused",
        "priority": "normal",
        "content": "x",
    }
    services.messages_persist(envelopes=[{**base, "message_id": str(uuid.uuid4()), "seq": 1}])
    with pytest.raises(IdempotencyKeyConflict):
        services.messages_persist(envelopes=[{**base, "message_id": str(uuid.uuid4()), "seq": 2}])
    assert Message.objects.count() == 1


def test_database_rejects_duplicate_keys_seqs_and_receipts(alice, conversation):
    def message(key: str, seq: int) -> Message:
        return Message(
            id=uuid.uuid4(),
            conversation=conversation,
            sender=alice,
            content="x",
            seq=seq,
            idempotency_key=key,
            created_at="2026-01-01T00:00:00Z",
        )

    first = message("k1", 1)
    first.save(force_insert=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        message("k1", 2).save(force_insert=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        message("k2", 1).save(force_insert=True)
    MessageReceipt.objects.create(message=first, user=alice, state=ReceiptState.READ)
    with pytest.raises(IntegrityError), transaction.atomic():
        MessageReceipt.objects.create(message=first, user=alice, state=ReceiptState.READ)


def _persisted(
    api: APIClient, conversation: Conversation, project_broker: Any, run_worker: Any, content: str = "hi"
) -> str:
    ack = send(api, conversation, content)
    run_worker()
    project_broker.join("messages", timeout=10_000)
    return str(ack["message_id"])


def test_receipts_are_monotonic_and_read_implies_delivered(
    api, conversation, bob, run_worker, project_broker
):
    message_id = _persisted(api, conversation, project_broker, run_worker)
    as_bob = client_for(bob)
    url = f"/api/v1/messages/{message_id}/receipts"

    assert as_bob.post(url, {"state": "read"}, format="json").status_code == 201
    assert as_bob.post(url, {"state": "delivered"}, format="json").status_code == 200  # never goes back
    assert as_bob.post(url, {"state": "read"}, format="json").status_code == 200
    states = set(
        MessageReceipt.objects.filter(message_id=message_id, user=bob).values_list("state", flat=True)
    )
    assert states == {"delivered", "read"}


def test_delivered_then_read_are_each_new_once(api, conversation, bob, run_worker, project_broker):
    message_id = _persisted(api, conversation, project_broker, run_worker)
    as_bob = client_for(bob)
    url = f"/api/v1/messages/{message_id}/receipts"
    codes = [
        as_bob.post(url, {"state": s}, format="json").status_code
        for s in ("delivered", "delivered", "read", "read")
    ]
    assert codes == [201, 200, 201, 200]


def test_receipts_only_by_recipients(api, conversation, carol, run_worker, project_broker):
    message_id = _persisted(api, conversation, project_broker, run_worker)
    url = f"/api/v1/messages/{message_id}/receipts"
    by_sender = api.post(url, {"state": "read"}, format="json")
    by_outsider = client_for(carol).post(url, {"state": "read"}, format="json")
    bad_state = client_for(carol).post(url, {"state": "sent"}, format="json")
    assert by_sender.status_code == 403
    assert by_outsider.status_code == 404
    assert bad_state.status_code == 400 and "state" in bad_state.json()["errors"]


def test_receipt_for_a_pending_message_is_409(api, conversation, bob):
    ack = send(api, conversation, "not yet")
    response = client_for(bob).post(
        f"/api/v1/messages/{ack['message_id']}/receipts", {"state": "read"}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "conflict"


@override_settings(INLINE_PAYLOAD_MAX_BYTES=64)
def test_large_content_is_offloaded_to_storage_and_read_back(api, conversation, run_worker, project_broker):
    content = "long message " * 100
    ack = send(api, conversation, content)
    assert api.get(f"/api/v1/messages/{ack['message_id']}").json()["content"] == content
    run_worker()
    project_broker.join("messages", timeout=10_000)
    row = Message.objects.get(pk=ack["message_id"])
    assert row.content == "" and row.payload_key
    body = api.get(f"/api/v1/messages/{ack['message_id']}").json()
    assert body["state"] == "persisted" and body["content"] == content
    listed = api.get(f"/api/v1/conversations/{conversation.pk}/messages").json()["results"]
    assert listed[0]["content"] == content


def test_conversation_messages_page_by_seq_cursor(api, conversation, run_worker, project_broker):
    for i in range(7):
        send(api, conversation, f"m{i}")
    run_worker()
    project_broker.join("messages", timeout=10_000)
    url = f"/api/v1/conversations/{conversation.pk}/messages"

    first = api.get(url, {"limit": 3}).json()
    second = api.get(url, {"limit": 3, "after_seq": first["next_after_seq"]}).json()
    last = api.get(first["next"].replace("after_seq=3", "after_seq=6")).json()
    assert [m["seq"] for m in first["results"]] == [1, 2, 3]
    assert [m["seq"] for m in second["results"]] == [4, 5, 6]
    assert [m["content"] for m in last["results"]] == ["m6"] and last["next"] is None
    assert api.get(url, {"limit": 0}).status_code == 400
    assert api.get(url, {"after_seq": "x"}).status_code == 400


def test_a_page_of_large_offloaded_messages_is_capped_in_bytes_and_the_cursor_goes_on(
    api, conversation, run_worker, project_broker
):
    contents = [f"{i}" * 20_000 for i in range(3)] + ["small"]  # offloaded: over 8 KiB each
    for content in contents:
        send(api, conversation, content)
    run_worker()
    project_broker.join("messages", timeout=10_000)
    assert Message.objects.exclude(payload_key="").count() == 3
    url = f"/api/v1/conversations/{conversation.pk}/messages"

    with override_settings(MESSAGE_PAGE_MAX_BYTES=50_000):
        first = api.get(url, {"limit": 500}).json()
        rest = api.get(first["next"]).json()
    with override_settings(MESSAGE_PAGE_MAX_BYTES=1024):
        one = api.get(url, {"limit": 500}).json()
    assert [m["content"] for m in first["results"]] == contents[:2] and first["next_after_seq"] == 2
    assert [m["content"] for m in rest["results"]] == contents[2:] and rest["next"] is None
    assert [m["seq"] for m in one["results"]] == [1] and one["next_after_seq"] == 1  # always one


def test_access_matrix_participant_outsider_staff_anonymous(
    api, conversation, run_worker, project_broker, transactional_db
):
    message_id = _persisted(api, conversation, project_broker, run_worker)
    outsider = client_for(make_user("mallory"))
    staff = client_for(make_user("root", staff=True))
    paths = [f"/api/v1/messages/{message_id}", f"/api/v1/conversations/{conversation.pk}/messages"]
    for path in paths:
        assert api.get(path).status_code == 200
        assert outsider.get(path).status_code == 404
        assert staff.get(path).status_code == 404  # staff use the admin, not the participants' API
        assert APIClient().get(path).status_code in (401, 403)
    assert [c["id"] for c in outsider.get("/api/v1/conversations").json()] == []


def test_unknown_and_malformed_message_ids(api, conversation):
    assert api.get(f"/api/v1/messages/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/v1/messages/not-a-uuid").status_code == 404
    assert api.get(f"/api/v1/conversations/{uuid.uuid4()}/messages").status_code == 404


def test_conversations_are_created_with_the_caller_and_listed_for_participants_only(api, bob, carol):
    created = api.post("/api/v1/conversations", {"participants": ["bob"], "title": "plans"}, format="json")
    assert created.status_code == 201
    assert created.json()["participants"] == ["alice", "bob"] and created.json()["title"] == "plans"
    assert [c["id"] for c in client_for(bob).get("/api/v1/conversations").json()] == [created.json()["id"]]
    assert client_for(carol).get("/api/v1/conversations").json() == []
    unknown = api.post("/api/v1/conversations", {"participants": ["nobody"]}, format="json")
    wrong = api.post("/api/v1/conversations", {"participants": "bob"}, format="json")
    assert unknown.status_code == 404 and unknown.json()["unknown_users"] == ["nobody"]
    assert wrong.status_code == 400


def test_schema_docs_and_health_endpoints(api, project_broker, transactional_db):
    client = APIClient()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "database": "ok"}
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert "/api/v1/messages" in schema.json()["paths"]
    assert client.get("/api/docs/").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and b"idempotency_ingress_duration_ms" in metrics.content


def test_readyz_is_503_naming_the_service_but_not_its_address_when_redis_is_down(
    transactional_db, monkeypatch
):
    import redis

    from delivery.api import health

    dead = RedisStreamsBroker(client=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    monkeypatch.setattr(health, "get_broker", lambda: dead)
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"redis": "unavailable", "database": "ok"}}
    assert b"127.0.0.1" not in response.content and b":1" not in response.content


def test_poison_message_is_dead_lettered_and_its_conversation_continues(
    api, conversation, run_worker, project_broker, monkeypatch
):
    real = persistence._persist

    def failing(envelopes: list[dict[str, Any]]) -> Any:
        if any(e.get("content") == "poison" for e in envelopes):
            raise ValueError("cannot persist poison")
        return real(envelopes)

    monkeypatch.setattr(persistence, "_persist", failing)
    project_broker.actors["persist_messages"].options.update(min_backoff=10, max_backoff=20)
    try:
        acks = [send(api, conversation, c) for c in ("a", "poison", "b")]
        run_worker()
        project_broker.join("messages", timeout=20_000)
    finally:
        project_broker.actors["persist_messages"].options.update(min_backoff=500, max_backoff=30_000)
    assert list(Message.objects.order_by("seq").values_list("seq", flat=True)) == [1, 3]
    services.dead_letters_mirror()
    dead = DeadLetter.objects.get()
    assert (dead.message_id, dead.seq, dead.reason) == (acks[1]["message_id"], 2, "max_retries")
    assert api.get(f"/api/v1/messages/{acks[1]['message_id']}").json()["state"] == "dead_lettered"

    # fixed and requeued: persisted in its original place
    monkeypatch.setattr(persistence, "_persist", real)
    assert services.dead_letter_requeue(dead_letter=dead, user=None) is True
    project_broker.join("messages", timeout=10_000)
    wait_for(lambda: Message.objects.count() == 3, timeout=10)
    assert [m.content for m in Message.objects.order_by("seq")] == ["a", "poison", "b"]
    assert api.get(f"/api/v1/messages/{acks[1]['message_id']}").json()["state"] == "persisted"
