"""Data migrations: what was persisted before a change is still found after it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from delivery.models import Conversation, Message

#: The last migration before client keys were scoped per conversation, and the one after.
BEFORE = [("delivery", "0001_initial")]
AFTER = [("delivery", "0002_client_keys_scoped_per_conversation")]


def _migrate(targets: list[tuple[str, str]] | None = None) -> None:
    """Migrate to ``targets`` (default: the latest migrations)."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


@pytest.fixture
def before_client_key_scope(transactional_db: None) -> Iterator[None]:
    """The database as it was before client keys were scoped per conversation."""
    _migrate(BEFORE)
    yield
    _migrate()


def _message(conversation: Conversation, sender: User, key: str, seq: int) -> Message:
    return Message.objects.create(
        id=uuid.uuid4(),
        conversation=conversation,
        sender=sender,
        content="hi",
        seq=seq,
        idempotency_key=key,
        created_at="2026-01-01T00:00:00Z",
    )


def test_client_keys_are_rewritten_per_conversation_so_retries_of_old_messages_are_found(
    before_client_key_scope, api, alice, conversation, project_broker
):
    old = _message(conversation, alice, f"c:{alice.pk}:k-old", 1)
    keyless_key = f"d:{alice.pk}:{'0' * 40}:{uuid.uuid4()}"
    keyless = _message(conversation, alice, keyless_key, 2)

    _migrate(AFTER)

    old.refresh_from_db()
    keyless.refresh_from_db()
    assert old.idempotency_key == f"c:{alice.pk}:{conversation.pk}:k-old"
    assert keyless.idempotency_key == keyless_key  # unique per message, never looked up
    retry = api.post(
        "/api/v1/messages",
        {"conversation_id": str(conversation.pk), "content": "hi", "client_message_id": "k-old"},
        format="json",
    )
    assert retry.status_code == 200, retry.content
    assert (retry.json()["message_id"], retry.json()["state"]) == (str(old.pk), "persisted")


def test_reversing_the_migration_scopes_client_keys_per_sender_again(transactional_db, alice, conversation):
    message = _message(conversation, alice, f"c:{alice.pk}:{conversation.pk}:k", 1)
    try:
        _migrate(BEFORE)
        message.refresh_from_db()
        assert message.idempotency_key == f"c:{alice.pk}:k"
    finally:
        _migrate()
    message.refresh_from_db()
    assert message.idempotency_key == f"c:{alice.pk}:{conversation.pk}:k"
