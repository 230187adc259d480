"""Ingress: acknowledged only after an atomic, idempotent enqueue; repeats recognised."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import override_settings
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from brokers import RedisStreamsBroker, partition_for
from delivery import services
from delivery.api.views import MessageCreateApi, fast_message_input
from delivery.models import Conversation, DeadLetter, Message
from delivery.services import ingest
from tests.conftest import wait_for
from tests.delivery.conftest import client_for

URL = "/api/v1/messages"


def post(api: APIClient, body: dict[str, Any], **headers: str) -> Any:
    return api.post(URL, body, format="json", **headers)


def test_post_is_acknowledged_pending_with_seq_after_the_enqueue(api, conversation, project_broker):
    response = post(
        api, {"conversation_id": str(conversation.pk), "content": "hello"}, HTTP_X_CORRELATION_ID="abc-1"
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["state"] == "pending" and body["idempotent_hit"] is False
    assert body["seq"] == 1 and body["conversation_id"] == str(conversation.pk)
    assert body["correlation_id"] == "abc-1" and response["X-Correlation-ID"] == "abc-1"
    assert uuid.UUID(body["message_id"]).version == 7
    stats = project_broker.partition_stats("messages")[partition_for(str(conversation.pk), 16)]
    assert stats.length == 1  # durably enqueued on the conversation's partition before the answer


def test_seq_increases_in_acknowledgement_order_per_conversation(api, conversation, alice, bob):
    seqs = [
        post(api, {"conversation_id": str(conversation.pk), "content": f"m{i}"}).json()["seq"]
        for i in range(5)
    ]
    other = services.conversation_create(creator=alice, participant_usernames=["bob"])
    first_other = post(api, {"conversation_id": str(other.pk), "content": "x"}).json()["seq"]
    assert seqs == [1, 2, 3, 4, 5]
    assert first_other == 1


def test_repeat_with_the_same_client_key_returns_200_with_the_same_ids(api, conversation):
    body = {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": "k-1"}
    first = post(api, body)
    again = post(api, body)
    by_header = post(
        api, {"conversation_id": str(conversation.pk), "content": "hi"}, HTTP_IDEMPOTENCY_KEY="k-1"
    )

    assert first.status_code == 202
    assert again.status_code == 200 and by_header.status_code == 200
    for repeat in (again.json(), by_header.json()):
        assert repeat["idempotent_hit"] is True
        assert (repeat["message_id"], repeat["seq"]) == (first.json()["message_id"], first.json()["seq"])
        assert repeat["created_at"] == first.json()["created_at"]


def test_client_keys_are_scoped_per_sender(api, conversation, bob):
    body = {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": "same"}
    from_alice = post(api, body).json()
    from_bob = post(client_for(bob), body)
    assert from_bob.status_code == 202
    assert from_bob.json()["message_id"] != from_alice["message_id"]


def _two_conversations(
    alice: Any, broker: RedisStreamsBroker, *, same_partition: bool
) -> tuple[Conversation, Conversation]:
    """Two conversations of alice and bob, on one partition or on two."""
    first = services.conversation_create(creator=alice, participant_usernames=["bob"])
    partition = partition_for(str(first.pk), broker.partitions)
    while True:
        other = services.conversation_create(creator=alice, participant_usernames=["bob"])
        if (partition_for(str(other.pk), broker.partitions) == partition) == same_partition:
            return first, other


@pytest.mark.parametrize("same_partition", [False, True], ids=["two partitions", "one partition"])
def test_the_same_client_key_in_another_conversation_is_another_message_and_both_are_persisted(
    api, alice, bob, run_worker, project_broker, redis_client, same_partition
):
    first, second = _two_conversations(alice, project_broker, same_partition=same_partition)
    bodies = [
        {"conversation_id": str(first.pk), "content": "hi", "client_message_id": "k-1"},
        {"conversation_id": str(second.pk), "content": "something else", "client_message_id": "k-1"},
    ]

    answers = [post(api, body) for body in bodies]

    assert [a.status_code for a in answers] == [202, 202], [a.content for a in answers]
    ids = [a.json()["message_id"] for a in answers]
    assert ids[0] != ids[1] and [a.json()["seq"] for a in answers] == [1, 1]
    repeats = [post(api, body) for body in bodies]  # each a repeat in its own conversation
    assert [(r.status_code, r.json()["message_id"]) for r in repeats] == [(200, ids[0]), (200, ids[1])]
    run_worker()
    project_broker.join("messages", timeout=10_000)
    persisted = {str(i): str(c) for i, c in Message.objects.values_list("id", "conversation_id")}
    assert persisted == {ids[0]: str(first.pk), ids[1]: str(second.pk)}
    assert project_broker.dead_letters("messages") == [] and DeadLetter.objects.count() == 0
    # Once the Redis records are gone, the database finds each repeat in its own conversation.
    for key in redis_client.keys("*:idem:*"):
        redis_client.delete(key)
    late = [post(api, body) for body in bodies]
    assert [(r.status_code, r.json()["message_id"]) for r in late] == [(200, ids[0]), (200, ids[1])]


#: Printable ASCII at the limits: space (inside: surrounding spaces are trimmed) and tilde
#: are the first and the last character allowed; 200 characters.
_LONGEST_KEY = "! ~" + "k" * 197


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("header", "é".encode().decode("latin-1")),  # a raw UTF-8 header, as Django decodes it
        ("header", "ключ"),
        ("header", "k" * 201),
        ("header", ""),
        ("header", "tab\there"),
        ("header", "del\x7f"),
        ("body", "ключ"),
        ("body", "é"),
        ("body", "k" * 201),
        ("body", "a\x01b"),
        ("body", "line\nbreak"),
        ("body", "del\x7f"),
    ],
)
def test_client_keys_that_are_not_1_to_200_printable_ascii_characters_are_400_naming_the_field(
    api, conversation, project_broker, where, key
):
    body = {"conversation_id": str(conversation.pk), "content": "hi"}
    if where == "header":
        response = post(api, body, HTTP_IDEMPOTENCY_KEY=key)
    else:
        response = post(api, {**body, "client_message_id": key})

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    field = "Idempotency-Key" if where == "header" else "client_message_id"
    assert list(response.json()["errors"]) == [field]
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 0


def test_a_key_of_200_printable_ascii_characters_is_accepted_in_the_header_and_the_body(api, conversation):
    by_header = post(
        api, {"conversation_id": str(conversation.pk), "content": "hi"}, HTTP_IDEMPOTENCY_KEY=_LONGEST_KEY
    )
    in_body = post(
        api, {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": _LONGEST_KEY}
    )
    assert len(_LONGEST_KEY) == 200
    assert (by_header.status_code, in_body.status_code) == (202, 200)
    assert in_body.json()["message_id"] == by_header.json()["message_id"]


def test_same_key_with_a_different_body_is_422_and_changes_nothing(api, conversation, project_broker):
    post(api, {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": "k"})
    response = post(
        api, {"conversation_id": str(conversation.pk), "content": "changed", "client_message_id": "k"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 1


def test_header_and_body_keys_that_differ_are_400(api, conversation):
    response = post(
        api,
        {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": "a"},
        HTTP_IDEMPOTENCY_KEY="b",
    )
    assert response.status_code == 400
    assert "client_message_id" in response.json()["errors"]


def test_fifty_concurrent_identical_posts_make_one_message_and_fifty_equal_answers(
    alice, conversation, project_broker
):
    body = {"conversation_id": str(conversation.pk), "content": "once", "client_message_id": "burst"}
    answers: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def send() -> None:
        try:
            client = client_for(alice)
            barrier.wait()
            response = post(client, body)
            with lock:
                answers.append((response.status_code, response.json()["message_id"], response.json()["seq"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(answers) == 50
    assert len({(m, s) for _, m, s in answers}) == 1
    assert sorted(code for code, _, _ in answers) == [200] * 49 + [202]
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 1


@override_settings(IDEMPOTENCY_WINDOW_MS=1500)
def test_keyless_repeats_are_deduplicated_in_a_sliding_window_from_the_first_send(
    api, conversation, redis_client
):
    body = {"conversation_id": str(conversation.pk), "content": "no key"}
    first = post(api, body).json()
    # A repeat inside the window is a hit, even across a wall-clock second boundary
    # (where the seed's 1-second buckets miss it).
    first_second = int(time.time())
    wait_for(lambda: int(time.time()) != first_second, timeout=2, what="the next wall-clock second")
    repeat = post(api, body)
    assert repeat.status_code == 200 and repeat.json()["message_id"] == first["message_id"]
    # Once the window (from the first send) is over, the same content is a new message.
    wait_for(lambda: not redis_client.keys("*:idem:*"), timeout=5, what="the window to pass")
    later = post(api, body)
    assert later.status_code == 202 and later.json()["message_id"] != first["message_id"]
    assert later.json()["seq"] == first["seq"] + 1


def test_a_key_whose_redis_record_is_gone_is_found_in_the_database(
    api, conversation, run_worker, project_broker, redis_client
):
    body = {"conversation_id": str(conversation.pk), "content": "old", "client_message_id": "k-old"}
    first = post(api, body).json()
    run_worker()
    project_broker.join("messages", timeout=10_000)
    for key in redis_client.keys("*:idem:*"):
        redis_client.delete(key)  # the record outlived its grace after the persistence

    again = post(api, body)
    assert again.status_code == 200
    assert again.json() | {"state": None} == first | {"state": None, "idempotent_hit": True}
    assert again.json()["state"] == "persisted"
    changed = post(api, {**body, "content": "other"})
    assert changed.status_code == 422


@override_settings(MAX_CONTENT_BYTES=1000)
def test_content_over_the_limit_is_413(api, conversation, project_broker):
    response = post(api, {"conversation_id": str(conversation.pk), "content": "é" * 501})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 0


def test_redis_unreachable_is_503_with_retry_after_and_nothing_half_done(api, conversation, monkeypatch):
    dead = RedisStreamsBroker(client=redis.Redis(port=1, socket_connect_timeout=0.5))
    monkeypatch.setattr(ingest, "get_broker", lambda: dead)
    response = post(api, {"conversation_id": str(conversation.pk), "content": "hi"})
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["code"] == "service_unavailable"
    assert Message.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": "x"}, "conversation_id"),
        ({"conversation_id": "not-a-uuid", "content": "x"}, "conversation_id"),
        ({"conversation_id": "CONV", "content": ""}, "content"),
        ({"conversation_id": "CONV", "content": "   "}, "content"),
        ({"conversation_id": "CONV", "content": 42}, "content"),
        ({"conversation_id": "CONV", "content": ["x"]}, "content"),
        ({"conversation_id": "CONV", "content": None}, "content"),
        ({"conversation_id": "CONV", "content": "x", "priority": "low"}, "priority"),
        ({"conversation_id": "CONV", "content": "x", "client_message_id": 7}, "client_message_id"),
        ({"conversation_id": "CONV", "content": "x", "client_message_id": "k" * 201}, "client_message_id"),
    ],
)
def test_malformed_message_bodies_are_400_with_the_field_named(
    api, conversation, project_broker, body, field
):
    body = {k: (str(conversation.pk) if v == "CONV" else v) for k, v in body.items()}
    response = post(api, body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert sum(s.length for s in project_broker.partition_stats("messages")) == 0


def test_bad_json_and_wrong_media_types_are_4xx_json(api, conversation):
    bad_json = api.post(URL, data="{nope", content_type="application/json")
    not_object = api.post(URL, data="[1, 2]", content_type="application/json")
    form = api.post(URL, data="a=b", content_type="application/x-www-form-urlencoded")
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "parse_error"
    assert not_object.status_code == 400 and "errors" in not_object.json()
    assert form.status_code == 415 and form.json()["code"] == "unsupported_media_type"


def test_unknown_conversation_and_other_peoples_conversations_are_404(api, conversation, carol):
    unknown = post(api, {"conversation_id": str(uuid.uuid4()), "content": "x"})
    not_mine = post(client_for(carol), {"conversation_id": str(conversation.pk), "content": "x"})
    assert unknown.status_code == 404 and not_mine.status_code == 404
    assert unknown.json() == not_mine.json()


def test_anonymous_requests_are_refused(conversation):
    response = APIClient().post(URL, {"conversation_id": str(conversation.pk), "content": "x"}, format="json")
    assert response.status_code in (401, 403)
    assert "detail" in response.json()


def _break_database_connection() -> None:
    """Terminate this process's database session from another one (a database restart,
    as a persistent connection sees it)."""
    import psycopg

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    s = connection.settings_dict
    with psycopg.connect(
        dbname=s["NAME"], user=s["USER"], host=s["HOST"], port=s["PORT"] or 5432, autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_post_reconnects_once_when_its_database_connection_broke(api, conversation):
    body = {"conversation_id": str(conversation.pk), "content": "before"}
    assert post(api, body).status_code == 202
    _break_database_connection()

    response = post(api, {**body, "content": "after"})

    assert response.status_code == 202, response.content
    assert response.json()["seq"] == 2


def test_other_views_answer_503_once_on_a_broken_database_connection_then_reconnect(api, conversation):
    _break_database_connection()

    broken = api.get("/api/v1/conversations")
    assert broken.status_code == 503 and broken["Retry-After"] == "1"
    assert broken.json()["code"] == "service_unavailable"
    again = api.get("/api/v1/conversations")
    assert again.status_code == 200 and [c["id"] for c in again.json()] == [str(conversation.pk)]


_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["hi", " hi", "hi ", "", " ", "a\x00b", "\ud800", "k" * 200, "k" * 201, "normal", "urgent"]
    ),
)
_VALUE = st.one_of(
    _TEXT, st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers())
)
_UUID = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: f"{{{u}}}"),
    st.uuids().map(lambda u: f" {u}"),
    st.uuids().map(lambda u: u.int),
    _VALUE,
)
_BODY = st.fixed_dictionaries(
    {},
    optional={
        "conversation_id": _UUID,
        "content": _VALUE,
        "client_message_id": _VALUE,
        "priority": st.one_of(st.sampled_from(["normal", "high", "urgent", "NORMAL", ""]), _VALUE),
        "other": _VALUE,
    },
)


_NEAR_VALID = st.fixed_dictionaries(
    {"conversation_id": st.uuids().map(str), "content": _TEXT},
    optional={
        "client_message_id": _TEXT,
        "priority": st.sampled_from(["normal", "high", "urgent", "NORMAL", ""]),
        "other": _VALUE,
    },
)


_ID = "0b5e8a52-7c1e-4f7a-9d1b-2f1c7a1e9b10"


@given(body=st.one_of(_NEAR_VALID, _BODY, _VALUE))
@settings(max_examples=400, deadline=None)
@example(body={"conversation_id": _ID, "content": "hi", "client_message_id": " k"})
@example(body={"conversation_id": _ID, "content": "hi", "client_message_id": "k" * 201})
@example(body={"conversation_id": _ID, "content": "hi", "client_message_id": "a\x00b"})
@example(body={"conversation_id": _ID, "content": "\ud800"})
@example(body={"conversation_id": _ID, "content": " \n"})
@example(body={"conversation_id": _ID, "content": "hi", "priority": None})
@example(body={"conversation_id": _ID.upper(), "content": "hi", "priority": "urgent"})
def test_fast_input_check_answers_as_the_serializer_or_leaves_the_body_to_it(body):
    fast = fast_message_input(body)
    serializer = MessageCreateApi.InputSerializer(data=body)
    if fast is not None:
        assert serializer.is_valid(), serializer.errors
        assert fast == dict(serializer.validated_data)
        assert [type(v) for v in fast.values()] == [type(v) for v in serializer.validated_data.values()]


def test_well_formed_bodies_take_the_fast_input_check():
    conversation_id = str(uuid.uuid4())
    bodies = [
        {"conversation_id": conversation_id, "content": "hello"},
        {
            "conversation_id": conversation_id,
            "content": "héllo ✓ ",
            "client_message_id": "k-1",
            "priority": "high",
        },
    ]
    assert [fast_message_input(b) for b in bodies] == [
        {"conversation_id": uuid.UUID(conversation_id), "content": "hello", "priority": "normal"},
        {
            "conversation_id": uuid.UUID(conversation_id),
            "content": "héllo ✓ ",
            "client_message_id": "k-1",
            "priority": "high",
        },
    ]


def test_too_few_replicas_is_503_and_the_retry_with_the_same_key_is_the_same_message(
    api, conversation, monkeypatch, redis_server
):
    """``REDIS_MIN_REPLICAS_ACK``: an enqueue no replica confirmed is not acknowledged; the
    client's retry with its key, once replication is back, answers the one message."""
    master = redis_server("--repl-diskless-sync-delay", "0")
    unconfirmed = RedisStreamsBroker(
        client=master.client(), namespace="t", min_replicas_ack=1, replicas_ack_timeout_ms=1000
    )
    monkeypatch.setattr(ingest, "get_broker", lambda: unconfirmed)
    body = {"conversation_id": str(conversation.pk), "content": "hi"}
    response = post(api, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "service_unavailable"
    assert "Idempotency-Key" in response.json()["detail"]

    replica = redis_server("--replicaof", "127.0.0.1", str(master.port))
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=20)
    retried = post(api, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert retried.status_code == 200, retried.content  # a repeat: the first message, not a second
    again = post(api, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.json()["message_id"] == retried.json()["message_id"]
    assert sum(s.length for s in unconfirmed.partition_stats("messages")) == 1
    unconfirmed.close()
