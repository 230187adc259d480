"""The ingress idempotency key (``delivery.idempotency``), on its own."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.errors import IdempotencyKeyReused, InvalidInput
from delivery.idempotency import (
    CLIENT_KEY_MAX_LENGTH,
    IngressKey,
    client_key_from,
    client_key_problem,
    digest,
    fingerprint,
)

CONVERSATION = "0b5e8a52-7c1e-4f7a-9d1b-2f1c7a1e9b10"
OTHER_CONVERSATION = "7f1d3c3e-1b2a-4c5d-8e9f-0a1b2c3d4e5f"

WINDOW_MS = 1000


def client(
    key: str = "k-1",
    *,
    sender_id: int = 7,
    conversation_id: str = CONVERSATION,
    content: str | bytes = "hi",
    priority: str = "normal",
) -> IngressKey:
    return IngressKey.for_client(
        sender_id=sender_id,
        conversation_id=conversation_id,
        client_key=key,
        content=content,
        priority=priority,
    )


def content_key(
    content: str | bytes = "hi", *, sender_id: int = 7, conversation_id: str = CONVERSATION
) -> IngressKey:
    return IngressKey.for_content(
        sender_id=sender_id, conversation_id=conversation_id, content=content, window_ms=WINDOW_MS
    )


# -- client keys ----------------------------------------------------------------------------


def test_a_client_key_is_scoped_per_sender_and_conversation_in_redis_and_in_the_database():
    key = client("k-1")

    assert key.redis_key == f"c:7:{CONVERSATION}:k-1"
    assert key.persisted_key == key.redis_key
    assert key.database_key(str(uuid.uuid4())) == key.redis_key  # the same for every retry
    assert key.ttl_ms == 0  # kept until the message is persisted (the broker's "until done")


def test_the_same_client_key_in_another_conversation_or_from_another_sender_is_another_key():
    keys = {
        client("k").redis_key,
        client("k", conversation_id=OTHER_CONVERSATION).redis_key,
        client("k", sender_id=8).redis_key,
    }
    assert len(keys) == 3


def test_a_repeat_of_the_same_body_is_accepted_and_a_different_body_is_a_reused_key():
    key = client(content="hi", priority="normal")

    key.check_repeat(client(content="hi", priority="normal").fingerprint)
    key.check_repeat(fingerprint(content="hi", priority="normal"))
    with pytest.raises(IdempotencyKeyReused):
        key.check_repeat(client(content="changed").fingerprint)
    with pytest.raises(IdempotencyKeyReused):
        key.check_repeat(client(priority="urgent").fingerprint)
    with pytest.raises(IdempotencyKeyReused):
        key.check_repeat("")  # a record without a fingerprint is no proof


def test_the_fingerprint_is_the_same_for_text_and_its_utf8_bytes():
    assert client(content="héllo ✓").fingerprint == client(content="héllo ✓".encode()).fingerprint


# -- keys derived from the content -------------------------------------------------------------


def test_a_message_without_a_key_is_deduplicated_on_its_content_for_the_window():
    key = content_key("no key")

    assert key.redis_key.startswith(f"d:7:{CONVERSATION}:")
    assert key.redis_key == content_key("no key").redis_key
    assert key.ttl_ms == WINDOW_MS
    assert key.persisted_key is None  # nothing to look up in the database
    assert key.fingerprint == ""
    key.check_repeat("anything")  # the content is the key: a hit is always a repeat


def test_each_message_without_a_key_has_its_own_database_key():
    key = content_key()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    assert key.database_key(first) == f"{key.redis_key}:{first}"
    assert key.database_key(first) != key.database_key(second)


def test_other_content_another_conversation_or_another_sender_is_another_content_key():
    keys = {
        content_key("a").redis_key,
        content_key("b").redis_key,
        content_key("a", conversation_id=OTHER_CONVERSATION).redis_key,
        content_key("a", sender_id=8).redis_key,
    }
    assert len(keys) == 4


def test_client_and_content_keys_never_meet():
    assert client(digest("hi")).redis_key != content_key("hi").redis_key


def test_the_key_is_a_frozen_value():
    key = client()
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.ttl_ms = 1  # type: ignore[misc]
    assert key == client() and hash(key) == hash(client())


# -- the one hash -----------------------------------------------------------------------------


def test_the_digest_tells_apart_parts_that_concatenate_alike():
    assert digest("ab", "c") != digest("a", "bc")
    assert digest("a", "") != digest("a")
    assert digest("x") == digest(b"x")
    assert len(digest("x")) == 32


@given(st.lists(st.text(max_size=5), max_size=4), st.lists(st.text(max_size=5), max_size=4))
def test_different_parts_have_different_digests(first, second):
    if first != second:
        assert digest(*first) != digest(*second)


# -- what a client key may be ------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["k", "k-1", "a b", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "k" * CLIENT_KEY_MAX_LENGTH]
)
def test_printable_ascii_keys_of_1_to_200_characters_are_accepted(key):
    assert client_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "1 to 200 characters"),
        ("k" * (CLIENT_KEY_MAX_LENGTH + 1), "1 to 200 characters"),
        ("é", "printable ASCII"),
        ("é".encode().decode("latin-1"), "printable ASCII"),  # a raw UTF-8 header in Django
        ("ключ", "printable ASCII"),
        ("tab\there", "printable ASCII"),
        ("line\nbreak", "printable ASCII"),
        ("nul\x00", "printable ASCII"),
        ("del\x7f", "printable ASCII"),
    ],
)
def test_other_keys_are_refused_with_the_reason(key, problem):
    assert problem in (client_key_problem(key) or "")


# -- header and body --------------------------------------------------------------------------


def test_the_key_comes_from_the_header_the_body_or_both_when_they_agree():
    assert client_key_from(header=None, body=None) is None
    assert client_key_from(header="k", body=None) == "k"
    assert client_key_from(header=None, body="k") == "k"
    assert client_key_from(header="k", body="k") == "k"


def test_a_header_and_a_body_key_that_differ_are_refused_naming_the_body_field():
    with pytest.raises(InvalidInput) as refused:
        client_key_from(header="a", body="b")
    assert refused.value.status_code == 400
    assert list(refused.value.extra["errors"]) == ["client_message_id"]


@pytest.mark.parametrize("header", ["", "k" * 201, "é".encode().decode("latin-1"), "a\tb"])
def test_a_bad_header_is_refused_naming_the_header(header):
    with pytest.raises(InvalidInput) as refused:
        client_key_from(header=header, body=None)
    assert list(refused.value.extra["errors"]) == ["Idempotency-Key"]
