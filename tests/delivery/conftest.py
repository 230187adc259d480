"""Fixtures of the delivery tests: users, token-authenticated clients, the project's
broker on the tests' Redis, and an in-process Dramatiq worker running the real actors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from dramatiq import Worker
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from brokers import RedisStreamsBroker
from delivery import services
from delivery.broker import get_broker
from delivery.models import Conversation, DeadLetter
from delivery.services import persistence


@pytest.fixture
def project_broker(redis_client: Any) -> Iterator[RedisStreamsBroker]:
    """The project's broker, its Redis state as empty as the tests' Redis database."""
    broker = get_broker()
    broker.reset()
    yield broker
    broker.reset()


@pytest.fixture
def run_worker(project_broker: RedisStreamsBroker) -> Iterator[Callable[..., Worker]]:
    """Start an in-process worker on the project's broker (stopped after the test)."""
    workers: list[Worker] = []

    def start(threads: int = 4) -> Worker:
        worker = Worker(project_broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    project_broker.reset()


def make_user(username: str, *, staff: bool = False) -> User:
    return User.objects.create_user(username=username, password="pw", is_staff=staff)


def client_for(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def alice(transactional_db: None) -> User:
    return make_user("alice")


@pytest.fixture
def bob(transactional_db: None) -> User:
    return make_user("bob")


@pytest.fixture
def carol(transactional_db: None) -> User:
    return make_user("carol")


@pytest.fixture
def api(alice: User) -> APIClient:
    return client_for(alice)


@pytest.fixture
def conversation(alice: User, bob: User, project_broker: RedisStreamsBroker) -> Conversation:
    conversation = Conversation.objects.create(title="alice and bob")
    conversation.participants.add(alice, bob)
    return conversation


#: Markup that must never reach a page unescaped (dead letters carry it in their error).
XSS = "<script>alert('pwned')</script>"


def send(api: APIClient, conversation: Conversation, content: str, **extra: Any) -> dict[str, Any]:
    """POST a message; returns the answer (asserting 200/202)."""
    response = api.post(
        "/api/v1/messages",
        {"conversation_id": str(conversation.pk), "content": content, **extra},
        format="json",
    )
    assert response.status_code in (200, 202), response.content
    return dict(response.json())


@pytest.fixture
def dead_letters(
    api, conversation, run_worker, project_broker, monkeypatch
) -> Callable[..., list[DeadLetter]]:
    """Make messages whose content contains POISON fail for good, and mirror them."""
    real = persistence._persist

    def failing(envelopes: list[dict[str, Any]]) -> Any:
        if any("POISON" in e.get("content", "") for e in envelopes):
            raise ValueError("cannot persist " + XSS)
        return real(envelopes)

    monkeypatch.setattr(persistence, "_persist", failing)
    actor = project_broker.actors["persist_messages"]
    monkeypatch.setitem(actor.options, "max_retries", 0)

    def make(*contents: str) -> list[DeadLetter]:
        for content in contents:
            send(api, conversation, content)
        run_worker()
        project_broker.join("messages", timeout=20_000)
        services.dead_letters_mirror()
        return list(DeadLetter.objects.order_by("seq"))

    def fix() -> None:
        monkeypatch.setattr(persistence, "_persist", real)

    make.fix = fix  # type: ignore[attr-defined]
    return make
