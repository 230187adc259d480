"""The clients' side of a partition, in process: a silent Redis or PostgreSQL costs one
timeout, then calls fail fast until a probe gets an answer (the fault suite runs the same
against the real API server and workers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from django.db import connection
from django.test import override_settings

from delivery.broker import REDIS_OUTAGE, redis_client
from messaging_project.postgresql.base import DATABASE_OUTAGE, DatabaseUnanswered, DeadlineConnection
from tests.conftest import wait_for
from tests.tcp_proxy import TcpProxy

#: Fail-fast period in these tests: long enough for a busy machine to act within it.
FAIL_FAST_S = 5.0


@pytest.fixture
def redis_proxy(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    monkeypatch.setattr(REDIS_OUTAGE, "fail_fast_s", FAIL_FAST_S)
    proxy = TcpProxy(urlsplit(redis_url).port or 6379)
    yield proxy
    proxy.close()
    REDIS_OUTAGE.answered()  # the process's view of Redis, for the tests after this one


@pytest.fixture
def database_proxy(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    monkeypatch.setattr(DATABASE_OUTAGE, "fail_fast_s", FAIL_FAST_S)
    proxy = TcpProxy(int(connection.settings_dict["PORT"]))
    yield proxy
    proxy.close()
    DATABASE_OUTAGE.answered()


def _timed(call: object) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()  # type: ignore[operator]
    except Exception as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_silent_redis_costs_one_socket_timeout_then_calls_fail_fast_until_it_answers(redis_proxy, settings):
    url = f"redis://127.0.0.1:{redis_proxy.port}{urlsplit(settings.REDIS_URL).path}"
    with override_settings(REDIS_URL=url, REDIS_SOCKET_TIMEOUT_MS=1000):
        client = redis_client()
    assert client.ping()
    redis_proxy.black_hole()

    error, took = _timed(client.ping)
    assert isinstance(error, redis.TimeoutError) and 0.9 < took < 2.5  # one timeout, no retries
    error, took = _timed(client.ping)
    assert isinstance(error, redis.ConnectionError) and "did not answer recently" in str(error)
    assert took < 0.2

    redis_proxy.heal()
    assert wait_for(lambda: _timed(client.ping)[0] is None, timeout=30, what="Redis answering again")
    assert not REDIS_OUTAGE.silent


def test_a_silent_database_costs_one_deadline_then_calls_fail_fast_until_it_answers(database_proxy):
    db = connection.settings_dict
    conninfo = (
        f"host=127.0.0.1 port={database_proxy.port} user={db['USER']} dbname={db['NAME']} connect_timeout=2"
    )
    first = DeadlineConnection.connect(conninfo, autocommit=True)
    first.answer_timeout_s = 1.0
    assert first.execute("SELECT 1").fetchone() == (1,)
    database_proxy.black_hole()

    error, took = _timed(lambda: first.execute("SELECT 1"))
    assert isinstance(error, DatabaseUnanswered) and 0.9 < took < 2.0
    assert first.closed  # its state is unknown: dropped
    assert isinstance(error, psycopg.OperationalError)  # Django answers it 503, workers pause
    database_proxy.heal()
    second = DeadlineConnection.connect(conninfo, autocommit=True)
    second.answer_timeout_s = 1.0
    error, took = _timed(lambda: second.execute("SELECT 1"))
    assert isinstance(error, DatabaseUnanswered) and "did not answer recently" in str(error) and took < 0.2

    def answers() -> bool:
        return _timed(lambda: second.execute("SELECT 1"))[0] is None

    assert wait_for(answers, timeout=30, what="the database answering again")
    assert not DATABASE_OUTAGE.silent
    second.close()
