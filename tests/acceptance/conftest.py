"""Fixtures of the acceptance tier: users, conversations and the project's subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token

from delivery.broker import get_broker
from delivery.models import Conversation
from tests.acceptance import harness

CONVERSATIONS = 40
PER_CONVERSATION = 50


@dataclass
class Stack:
    database_url: str
    redis_url: str
    token: str
    conversations: list[str]
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        return harness.project_env(database_url=self.database_url, redis_url=self.redis_url, **extra)

    def plan(self, marker: Callable[[str, int], str] | None = None) -> list[tuple[str, str]]:
        return [
            (c, marker(c, i) if marker else f"{c}:{i}")
            for i in range(PER_CONVERSATION)
            for c in self.conversations
        ]


@pytest.fixture
def stack(transactional_db: None, redis_client: Any, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    alice = User.objects.create_user("alice", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    token = Token.objects.create(user=alice).key
    conversations = []
    for _ in range(CONVERSATIONS):
        conversation = Conversation.objects.create()
        conversation.participants.add(alice, bob)
        conversations.append(str(conversation.pk))
    get_broker().reset()
    yield Stack(database_url, redis_url, token, conversations, tmp_path)


@pytest.fixture
def services() -> Iterator[list[harness.Service]]:
    started: list[harness.Service] = []
    yield started
    for service in started:
        service.stop()


@pytest.fixture
def poison_trigger(transactional_db: None) -> Iterator[Callable[[], None]]:
    """PostgreSQL refuses to insert messages whose content contains ``POISON`` (a realistic
    poison: the database rejects the row); the fixture yields the fix, which drops it."""

    def fix() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS reject_poison ON delivery_message")

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION reject_poison() RETURNS trigger AS $$ BEGIN "
            "IF NEW.content LIKE '%POISON%' THEN RAISE EXCEPTION 'poison content refused'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute("DROP TRIGGER IF EXISTS reject_poison ON delivery_message")
        cursor.execute(
            "CREATE TRIGGER reject_poison BEFORE INSERT ON delivery_message "
            "FOR EACH ROW EXECUTE FUNCTION reject_poison()"
        )
    yield fix
    fix()
    with connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS reject_poison()")
