"""Receipts at group scale (issue 22): read watermarks per (conversation, user), SENT
implied by the persisted message, a message's receipts combining both sources, unread
counts in the conversation list. Real PostgreSQL, real threads, the real worker."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from delivery import selectors, services
from delivery.api.watermarks import ConversationReadApi, fast_read_input
from delivery.models import Conversation, Message, MessageReceipt, ReadWatermark, ReceiptState
from tests.conftest import python_subprocess
from tests.delivery.conftest import client_for, make_user

Through = Conversation.participants.through


def group(members: list[User], extra: int = 0) -> Conversation:
    """A conversation of ``members`` and ``extra`` more users made for it."""
    tag = uuid.uuid4().hex[:6]
    if extra:
        members = members + User.objects.bulk_create(
            [User(username=f"member-{tag}-{i}", password="!") for i in range(extra)]
        )
    conversation = Conversation.objects.create(title=f"group {tag}")
    Through.objects.bulk_create([Through(conversation=conversation, user=m) for m in members])
    return conversation


def persist(conversation: Conversation, senders: list[User], first_seq: int = 1) -> list[Message]:
    """Persist one message per sender (``seq`` from ``first_seq``) through the persist service."""
    envelopes = [
        {
            "message_id": str(uuid.uuid4()),
            "conversation_id": str(conversation.pk),
            "sender_id": sender.pk,
            "created_at": 1_700_000_000_000,
            "idempotency_key": f"test:{uuid.uuid4()}",
            "content": f"m{first_seq + i}",
            "seq": first_seq + i,
        }
        for i, sender in enumerate(senders)
    ]
    services.messages_persist(envelopes=envelopes)
    return list(Message.objects.filter(pk__in=[e["message_id"] for e in envelopes]).order_by("seq"))


def read_url(conversation: Conversation | uuid.UUID) -> str:
    return f"/api/v1/conversations/{getattr(conversation, 'pk', conversation)}/read"


def post_read(client: APIClient, conversation: Conversation, seq: Any, state: str | None = None) -> Any:
    body = {"seq": seq} if state is None else {"seq": seq, "state": state}
    return client.post(read_url(conversation), body, format="json")


def shown_states(client: APIClient, message: Message) -> dict[str, list[str]]:
    """The receipts ``GET /messages/{id}`` shows, as {user: [states in time order]}."""
    response = client.get(f"/api/v1/messages/{message.pk}")
    assert response.status_code == 200, response.content
    states: dict[str, list[str]] = {}
    for receipt in response.json()["receipts"]:
        states.setdefault(receipt["user"], []).append(receipt["state"])
    return states


# --- the watermark endpoint -----------------------------------------------------------


def test_read_moves_the_watermark_forward_and_implies_delivered(api, alice, bob, conversation):
    persist(conversation, [alice] * 4)
    as_bob = client_for(bob)

    answer = post_read(as_bob, conversation, 3)

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert {k: body[k] for k in ("conversation_id", "read_seq", "delivered_seq")} == {
        "conversation_id": str(conversation.pk),
        "read_seq": 3,
        "delivered_seq": 3,
    }
    assert body["read_at"] is not None and body["read_at"] == body["delivered_at"]
    row = ReadWatermark.objects.get(conversation=conversation, user=bob)
    assert (row.read_seq, row.delivered_seq) == (3, 3)


def test_delivered_moves_only_the_delivered_watermark_and_never_lowers_read(api, alice, bob, conversation):
    persist(conversation, [alice] * 6)
    as_bob = client_for(bob)

    delivered = post_read(as_bob, conversation, 5, "delivered").json()
    read = post_read(as_bob, conversation, 2).json()
    delivered_less = post_read(as_bob, conversation, 1, "delivered").json()

    assert (delivered["read_seq"], delivered["delivered_seq"], delivered["read_at"]) == (0, 5, None)
    assert (read["read_seq"], read["delivered_seq"]) == (2, 5)
    assert read["delivered_at"] == delivered["delivered_at"]  # delivered did not move
    assert delivered_less == read


def test_repeats_and_late_reports_are_200_no_ops_that_keep_the_times(api, alice, bob, conversation):
    persist(conversation, [alice] * 4)
    as_bob = client_for(bob)
    first = post_read(as_bob, conversation, 3)

    again = post_read(as_bob, conversation, 3)
    late = post_read(as_bob, conversation, 1)
    late_delivered = post_read(as_bob, conversation, 2, "delivered")

    assert [r.status_code for r in (first, again, late, late_delivered)] == [200] * 4
    assert again.json() == late.json() == late_delivered.json() == first.json()
    assert ReadWatermark.objects.filter(conversation=conversation, user=bob).count() == 1


def test_seq_past_the_last_persisted_message_is_clamped_so_pending_messages_stay_unread(
    api, alice, bob, conversation, run_worker, project_broker
):
    persist(conversation, [alice] * 3)
    # acknowledged, not persisted yet: seq 4 and 5 (numbering resumes after the rows)
    pending = [
        api.post(
            "/api/v1/messages",
            {"conversation_id": str(conversation.pk), "content": c, "client_message_id": c},
            format="json",
        ).json()
        for c in ("p4", "p5")
    ]
    as_bob = client_for(bob)

    answer = post_read(as_bob, conversation, 1_000)

    assert [p["seq"] for p in pending] == [4, 5]
    assert answer.status_code == 200 and answer.json()["read_seq"] == 3  # the effective watermark
    assert answer.json()["delivered_seq"] == 3
    # once persisted, they are unread: marking 1,000 read did not cover them
    run_worker()
    project_broker.join("messages", timeout=10_000)
    listed = {c["id"]: c for c in as_bob.get("/api/v1/conversations").json()}
    assert listed[str(conversation.pk)]["unread_count"] == 2


def test_seq_zero_marks_nothing_and_answers_the_watermark(api, alice, bob, conversation):
    persist(conversation, [alice] * 2)
    as_bob = client_for(bob)
    assert post_read(as_bob, conversation, 0).json() == {
        "conversation_id": str(conversation.pk),
        "read_seq": 0,
        "read_at": None,
        "delivered_seq": 0,
        "delivered_at": None,
    }
    moved = post_read(as_bob, conversation, 2).json()
    assert post_read(as_bob, conversation, 0).json() == moved


def test_an_empty_conversation_has_nothing_to_read(api, bob, conversation):
    body = post_read(client_for(bob), conversation, 5).json()
    assert (body["read_seq"], body["delivered_seq"]) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "seq"),
        ({"seq": -1}, "seq"),
        ({"seq": "5"}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": None}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"seq": 1, "state": "sent"}, "state"),
        ({"seq": 1, "state": "READ"}, "state"),
        ({"seq": 1, "state": 1}, "state"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_changes_nothing(api, alice, bob, conversation, body, field):
    persist(conversation, [alice])
    response = client_for(bob).post(read_url(conversation), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not ReadWatermark.objects.exists()


seq_values = st.one_of(
    st.integers(min_value=-5, max_value=2**64),
    st.sampled_from([2**63 - 1, 2**63, 0]),
    st.text(max_size=4),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
state_values = st.one_of(
    st.sampled_from(["read", "delivered", "sent", "READ", " read", ""]), st.integers(), st.none()
)


@given(
    body=st.one_of(
        st.fixed_dictionaries({"seq": seq_values}),
        st.fixed_dictionaries({"seq": seq_values, "state": state_values}),
        st.fixed_dictionaries({"state": state_values}),
        st.lists(st.integers(), max_size=2),
    )
)
def test_the_fast_input_check_agrees_with_the_serializer(body):
    fast = fast_read_input(body)
    serializer = ConversationReadApi.InputSerializer(data=body)
    # every body the serializer accepts takes the fast path, to the same values
    assert (fast is not None) == serializer.is_valid(), (body, serializer.errors)
    if fast is not None:
        assert fast == (serializer.validated_data["seq"], serializer.validated_data["state"])
        assert type(fast[0]) is type(serializer.validated_data["seq"])


def test_the_answer_written_directly_is_the_output_serializers(api, alice, bob, conversation):
    persist(conversation, [alice] * 2)
    as_bob = client_for(bob)
    for seq, state in ((0, "read"), (1, "delivered"), (2, "read")):
        answer = post_read(as_bob, conversation, seq, state).json()
        watermark = selectors.watermark_of(user=bob, conversation_id=conversation.pk)
        assert answer == ConversationReadApi.OutputSerializer(watermark).data


def test_a_body_that_is_not_an_object_is_400(api, bob, conversation):
    as_bob = client_for(bob)
    for raw in (b"[1]", b"5", b"not json"):
        response = as_bob.post(read_url(conversation), raw, content_type="application/json")
        assert response.status_code == 400, (raw, response.content)
        assert response.json()["code"] in ("invalid", "parse_error")


def test_only_participants_move_watermarks_and_existence_does_not_leak(api, alice, bob, conversation):
    persist(conversation, [alice] * 2)
    outsider = client_for(make_user("mallory"))
    staff = client_for(make_user("root", staff=True))

    by_outsider = post_read(outsider, conversation, 1)
    by_staff = post_read(staff, conversation, 1)
    unknown = post_read(client_for(bob), uuid.uuid4(), 1)  # type: ignore[arg-type]
    anonymous = post_read(APIClient(), conversation, 1)
    by_sender = post_read(api, conversation, 2)

    assert by_outsider.status_code == by_staff.status_code == unknown.status_code == 404
    assert by_outsider.json() == unknown.json()  # a stranger cannot tell it exists
    assert anonymous.status_code in (401, 403)
    assert by_sender.status_code == 200  # the sender is a participant too
    assert list(ReadWatermark.objects.values_list("user__username", flat=True)) == ["alice"]


def _race(token: str, conversation: Conversation, plan: list[tuple[int, str]]) -> list[tuple[int, str, Any]]:
    """Post every (seq, state) of ``plan`` at once, each from its own thread (and so its own
    database connection); the answers, in completion order."""
    start = threading.Barrier(len(plan))
    answers: list[tuple[int, str, Any]] = []
    errors: list[BaseException] = []

    def post(seq: int, state: str) -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            start.wait(timeout=30)
            answers.append((seq, state, post_read(client, conversation, seq, state)))
        except BaseException as error:  # reported in the test's thread
            errors.append(error)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=post, args=item) for item in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return answers


def test_concurrent_reads_of_5_and_3_always_end_at_5(transactional_db, alice, bob):
    """Many threads race ``read`` 5, ``read`` 3 and ``delivered`` 3 on one watermark, from
    no row at all (so the first insert races too), round after round."""
    token = Token.objects.create(user=bob).key
    plan = [(5, "read"), (3, "read"), (3, "delivered"), (3, "read")] * 4
    for _ in range(8):
        conversation = group([alice, bob])
        persist(conversation, [alice] * 6)

        answers = _race(token, conversation, plan)

        assert len(answers) == len(plan) and {r.status_code for _, _, r in answers} == {200}
        for seq, state, response in answers:
            # each answer is the watermark after its own report: at least what it asked for
            body = response.json()
            assert body["delivered_seq"] >= max(seq, body["read_seq"])
            assert state != "read" or body["read_seq"] >= seq
        row = ReadWatermark.objects.get(conversation=conversation, user=bob)
        assert (row.read_seq, row.delivered_seq) == (5, 5)


@pytest.mark.parametrize("extra_members", [0, 498])
def test_a_watermark_update_is_one_statement_whatever_the_group_size(alice, bob, extra_members):
    conversation = group([alice, bob], extra=extra_members)
    persist(conversation, [alice] * 3)
    as_bob = client_for(bob)
    as_bob.get("/api/v1/conversations")  # the token is looked up once, then cached

    with CaptureQueriesContext(connection) as first:  # no row yet: the insert
        inserted = services.watermark_advance(conversation_id=conversation.pk, user=bob, seq=2)
    with CaptureQueriesContext(connection) as request:  # through the API: the update
        answer = post_read(as_bob, conversation, 3)

    assert inserted.read_seq == 2 and answer.json()["read_seq"] == 3
    assert len(first) == 1
    assert len(request) == 1 and "delivery_readwatermark" in request.captured_queries[0]["sql"]


# --- SENT implied, receipts combined -----------------------------------------------------


def test_a_group_of_500_persists_with_no_receipt_rows_and_still_shows_sent_to_everyone(
    api, alice, bob, run_worker, project_broker
):
    conversation = group([alice, bob], extra=498)
    acks = [
        api.post(
            "/api/v1/messages", {"conversation_id": str(conversation.pk), "content": f"hi {i}"}, format="json"
        ).json()
        for i in range(3)
    ]

    run_worker()
    project_broker.join("messages", timeout=20_000)

    assert Message.objects.filter(conversation=conversation).count() == 3
    assert not MessageReceipt.objects.exists()
    detail = api.get(f"/api/v1/messages/{acks[0]['message_id']}").json()
    assert len(detail["receipts"]) == 499
    assert {r["state"] for r in detail["receipts"]} == {"sent"}
    assert {r["timestamp"] for r in detail["receipts"]} == {detail["persisted_at"]}
    assert "alice" not in {r["user"] for r in detail["receipts"]}  # the sender is no recipient


def _report(client: APIClient, user: User, messages: list[Message], action: str) -> None:
    kind, _, arg = action.partition(":")
    target = messages[1]  # the message under test is seq 2
    if kind == "row":  # a receipt reported for one message
        response = client.post(f"/api/v1/messages/{target.pk}/receipts", {"state": arg}, format="json")
        assert response.status_code in (200, 201), response.content
    elif kind == "legacy-sent":  # a SENT row as persistence wrote them before issue 22
        MessageReceipt.objects.create(message=target, user=user, state=ReceiptState.SENT)
    else:  # a watermark: "read:3", "delivered:2"
        response = post_read(client, target.conversation, int(arg), kind)
        assert response.status_code == 200, response.content


#: (case, what bob reports in order, what GET /messages/{seq 2} shows for bob).
COMBINED = [
    ("nothing: sent alone, implied", [], ["sent"]),
    ("an old SENT row and the implied SENT are one receipt", ["legacy-sent"], ["sent"]),
    ("a delivered row", ["row:delivered"], ["sent", "delivered"]),
    ("a read row implies delivered", ["row:read"], ["sent", "delivered", "read"]),
    ("a read watermark at the message", ["read:2"], ["sent", "delivered", "read"]),
    ("a read watermark past the message", ["read:3"], ["sent", "delivered", "read"]),
    ("a read watermark before the message", ["read:1"], ["sent"]),
    ("a delivered watermark", ["delivered:3"], ["sent", "delivered"]),
    ("delivered watermark, then a read row", ["delivered:2", "row:read"], ["sent", "delivered", "read"]),
    ("a delivered row, then a read watermark", ["row:delivered", "read:2"], ["sent", "delivered", "read"]),
    ("read row, then a delivered watermark", ["row:read", "delivered:3"], ["sent", "delivered", "read"]),
    ("a read watermark before it, a delivered row on it", ["read:1", "row:delivered"], ["sent", "delivered"]),
    ("everything, old row included", ["legacy-sent", "row:delivered", "read:3", "row:read"],
     ["sent", "delivered", "read"]),
]  # fmt: skip


@pytest.mark.parametrize(("actions", "expected"), [c[1:] for c in COMBINED], ids=[c[0] for c in COMBINED])
def test_a_messages_receipts_combine_watermarks_and_rows(api, alice, bob, carol, actions, expected):
    conversation = group([alice, bob, carol])
    messages = persist(conversation, [alice] * 3)
    as_bob = client_for(bob)

    for action in actions:
        _report(as_bob, bob, messages, action)

    assert shown_states(api, messages[1]) == {"bob": expected, "carol": ["sent"]}
    assert shown_states(as_bob, messages[1]) == shown_states(api, messages[1])  # same for every reader


def test_a_per_message_receipt_already_implied_by_the_watermark_is_a_200_no_op(api, alice, bob, conversation):
    messages = persist(conversation, [alice] * 3)
    as_bob = client_for(bob)
    post_read(as_bob, conversation, 2)

    read_again = as_bob.post(f"/api/v1/messages/{messages[1].pk}/receipts", {"state": "read"}, format="json")
    delivered_again = as_bob.post(
        f"/api/v1/messages/{messages[0].pk}/receipts", {"state": "delivered"}, format="json"
    )
    beyond = as_bob.post(f"/api/v1/messages/{messages[2].pk}/receipts", {"state": "read"}, format="json")

    assert (read_again.status_code, read_again.json()["created"]) == (200, False)
    assert (delivered_again.status_code, delivered_again.json()["created"]) == (200, False)
    assert (beyond.status_code, beyond.json()["created"]) == (201, True)  # seq 3 is past the watermark
    assert list(MessageReceipt.objects.values_list("message_id", "state").order_by("state")) == [
        (messages[2].pk, "delivered"),
        (messages[2].pk, "read"),
    ]


def test_the_sender_and_outsiders_still_cannot_record_per_message_receipts(api, alice, bob, conversation):
    messages = persist(conversation, [alice])
    post_read(api, conversation, 1)  # the sender's own watermark does not make it a recipient
    url = f"/api/v1/messages/{messages[0].pk}/receipts"
    assert api.post(url, {"state": "read"}, format="json").status_code == 403
    assert client_for(make_user("mallory")).post(url, {"state": "read"}, format="json").status_code == 404


# --- unread counts in the conversation list -----------------------------------------------


def test_the_conversation_list_counts_unread_messages_from_others_after_the_watermark(
    api, alice, bob, conversation
):
    other = group([alice, bob])
    persist(conversation, [alice, alice, bob, alice, alice])  # bob's own message (seq 3) is not unread
    persist(other, [bob])
    as_bob = client_for(bob)

    def unread() -> dict[str, int]:
        return {c["id"]: c["unread_count"] for c in as_bob.get("/api/v1/conversations").json()}

    assert unread() == {str(conversation.pk): 4, str(other.pk): 0}
    post_read(as_bob, conversation, 2)
    assert unread() == {str(conversation.pk): 2, str(other.pk): 0}
    post_read(as_bob, conversation, 5, "delivered")  # delivered is not read
    assert unread()[str(conversation.pk)] == 2
    post_read(as_bob, conversation, 5)
    assert unread()[str(conversation.pk)] == 0
    # alice's count is her own: bob's message is unread for her
    assert {c["id"]: c["unread_count"] for c in api.get("/api/v1/conversations").json()}[
        str(conversation.pk)
    ] == 1


def test_unread_counts_stop_at_the_cap(api, alice, bob, conversation, monkeypatch):
    monkeypatch.setattr(selectors, "UNREAD_COUNT_MAX", 3)
    persist(conversation, [alice] * 5)
    listed = client_for(bob).get("/api/v1/conversations").json()
    assert listed[0]["unread_count"] == 3


def test_unread_counts_are_one_query_for_the_whole_list(api, alice, bob):
    as_bob = client_for(bob)
    first = group([alice, bob])
    persist(first, [alice] * 2)
    as_bob.get("/api/v1/conversations")  # the token is looked up the same way every time

    with CaptureQueriesContext(connection) as one:
        assert len(as_bob.get("/api/v1/conversations").json()) == 1
    for _ in range(5):
        persist(group([alice, bob], extra=3), [alice] * 3)
    with CaptureQueriesContext(connection) as six:
        listed = as_bob.get("/api/v1/conversations").json()

    assert len(listed) == 6 and {c["unread_count"] for c in listed} == {2, 3}
    assert len(six) == len(one)
    assert sum("delivery_readwatermark" in q["sql"] for q in six.captured_queries) == 1


def test_creating_a_conversation_answers_the_fields_of_the_contract(api, bob):
    created = api.post("/api/v1/conversations", {"participants": ["bob"]}, format="json")
    assert created.status_code == 201
    assert set(created.json()) == {"id", "participants", "title", "created_at"}


# --- schema, admin, the portable statements ------------------------------------------------


def test_the_schema_documents_the_watermark_endpoint_and_the_unread_count(transactional_db):
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/conversations/{conversation_id}/read"]["post"]
    assert "200" in operation["responses"]
    components = schema["components"]["schemas"]
    assert set(components["ReadWatermark"]["properties"]) == {
        "conversation_id",
        "read_seq",
        "read_at",
        "delivered_seq",
        "delivered_at",
    }
    assert set(components["ConversationReadInput"]["properties"]) == {"seq", "state"}
    assert components["ConversationReadInput"]["required"] == ["seq"]
    assert "unread_count" in components["ConversationListItem"]["properties"]
    assert "unread_count" not in components["Conversation"]["properties"]


def test_the_admin_shows_watermarks_read_only(api, alice, bob, conversation):
    persist(conversation, [alice] * 2)
    post_read(client_for(bob), conversation, 2)
    row = ReadWatermark.objects.get()
    admin = User.objects.create_superuser("admin", password="pw")
    client = APIClient()
    client.force_login(admin)

    listing = client.get("/admin/delivery/readwatermark/")
    page = client.get(f"/admin/delivery/readwatermark/{row.pk}/change/")

    assert listing.status_code == 200 and b"bob" in listing.content
    assert page.status_code == 200 and b"Save" not in page.content  # a view, not a form
    assert client.get("/admin/delivery/readwatermark/add/").status_code == 403
    assert client.post(f"/admin/delivery/readwatermark/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ReadWatermark.objects.get().read_seq == 2


def test_the_portable_statements_work_on_sqlite(tmp_path, redis_url):
    process = python_subprocess(
        "-m",
        "tests.delivery.sqlite_receipts_app",
        env={
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
            "LOG_LEVEL": "WARNING",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result == {
        "vendor": "sqlite",
        "inserted": 3,
        "receipt_rows": 0,
        "statements": 1,
        "unread_before": 2,  # seq 1 and 3 (bob sent seq 2)
        "unread_after": 1,
        "delivered": [0, 3, True],  # 99 clamped to the last persisted seq
        "read": [1, 3],
        "times_aware": True,
        "late": [1, 3, True],
        "outsider": "not found",
        "receipts": [["bob", "sent"], ["bob", "delivered"], ["bob", "read"]],
    }
