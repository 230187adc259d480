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
from delivery.broker import get_broker
from delivery.models import Conversation


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
