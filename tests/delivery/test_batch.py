"""``POST /api/v1/messages/batch``: each item answered as a single POST would answer it,
in request order, for one SQL query and one Redis round trip."""

from __future__ import annotations

from typing import Any

import redis
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from brokers import RedisStreamsBroker, partition_for
from delivery.models import Conversation, Message
from delivery.services import ingest_batch
from tests.delivery.conftest import send

URL = "/api/v1/messages/batch"


def batch(api: Any, items: list[dict[str, Any]]) -> Any:
    return api.post(URL, {"messages": items}, format="json")


def item(conversation: Conversation, content: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"conversation_id": str(conversation.pk), "content": content, "client_message_id": key, **extra}


def test_each_item_is_answered_as_a_single_post_would_be_in_request_order(
    api, alice, bob, carol, conversation, run_worker, project_broker, monkeypatch
):
    second = Conversation.objects.create()
    second.participants.add(alice, bob)
    foreign = Conversation.objects.create()
    foreign.participants.add(bob, carol)
    persisted = send(api, conversation, "earlier", client_message_id="k-old")
    send(api, second, "hello")  # Redis numbers both conversations already
    run_worker()
    project_broker.join("messages", timeout=10_000)
    items = [
        item(conversation, "one", "k-1"),
        item(second, "other conversation", "k-1"),  # the same key elsewhere: another message
        {"conversation_id": str(conversation.pk), "content": "no key"},
        item(foreign, "not mine", "k-2"),
        item(conversation, "two", "k-3"),
        item(conversation, "earlier", "k-old"),  # a repeat of a persisted message
        item(conversation, "one", "k-1"),  # a repeat within the batch
        item(conversation, "changed", "k-old"),  # the key reused for another body
        item(conversation, "three", "k-4", priority="urgent"),
    ]
    partitions = {partition_for(str(c.pk), 16) for c in (conversation, second)}
    round_trips: list[int] = []
    enqueue = project_broker.store.enqueue

    def counted(calls: Any) -> Any:  # lets the calls through, counting round trips
        round_trips.append(len(calls))
        return enqueue(calls)

    monkeypatch.setattr(project_broker.store, "enqueue", counted)

    with CaptureQueriesContext(connection) as queries:
        response = batch(api, items)

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 202, 400, 404, 202, 200, 200, 422, 202]
    assert results[2]["errors"] == {"client_message_id": ["This field is required."]}
    assert results[3]["code"] == "not_found" and results[7]["code"] == "idempotency_key_reused"
    assert results[5]["message_id"] == persisted["message_id"] and results[5]["state"] == "persisted"
    assert results[6]["message_id"] == results[0]["message_id"] and results[6]["idempotent_hit"] is True
    assert results[1]["message_id"] != results[0]["message_id"]
    # seq in request order per conversation, after the message persisted before
    assert [results[i]["seq"] for i in (0, 4, 8)] == [2, 3, 4] and results[1]["seq"] == 2
    # One query checks participants and persisted keys for the whole batch; the others are
    # per case, not per item: reading the persisted repeat, the state of the in-batch
    # repeat (2). And one round trip to Redis: an enqueue script call per partition.
    sql = [q["sql"] for q in queries]
    assert sum("participants" in q for q in sql) == 1 and len(sql) == 4, sql
    assert round_trips == [len(partitions)]

    project_broker.join("messages", timeout=10_000)
    rows = list(
        Message.objects.filter(conversation=conversation).order_by("seq").values_list("content", "seq")
    )
    assert rows == [("earlier", 1), ("one", 2), ("two", 3), ("three", 4)]


def test_a_batch_must_hold_1_to_100_messages(api, conversation):
    assert batch(api, []).status_code == 400
    too_many = [item(conversation, f"m{i}", f"k{i}") for i in range(101)]
    answer = batch(api, too_many)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
    assert api.post(URL, {"messages": "nope"}, format="json").status_code == 400
    assert Message.objects.count() == 0


@override_settings(BATCH_MAX_BYTES=2000)
def test_a_batch_over_the_byte_limit_is_413_and_changes_nothing(api, conversation, project_broker):
    response = batch(api, [item(conversation, "x" * 500, f"k{i}") for i in range(5)])
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 0


def test_with_redis_unreachable_a_batch_is_503_unless_something_was_answered(
    api, conversation, run_worker, project_broker, monkeypatch
):
    persisted = send(api, conversation, "earlier", client_message_id="k-old")
    run_worker()
    project_broker.join("messages", timeout=10_000)
    dead = RedisStreamsBroker(client=redis.Redis(port=1, socket_connect_timeout=0.5))
    monkeypatch.setattr(ingest_batch, "get_broker", lambda: dead)

    nothing = batch(api, [item(conversation, "new", "k-new")])
    assert nothing.status_code == 503 and nothing["Retry-After"] == "1"

    some = batch(api, [item(conversation, "new", "k-new"), item(conversation, "earlier", "k-old")])
    assert some.status_code == 200
    assert [r["status"] for r in some.json()["results"]] == [503, 200]
    assert some.json()["results"][1]["message_id"] == persisted["message_id"]
