"""Faults against the real API server and ``runworkers`` (subprocesses): every acknowledged
message persisted exactly once, in ``seq`` order, nothing dead-lettered unless injected."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from delivery.broker import get_broker
from delivery.models import DeadLetter, Message
from tests.acceptance import harness
from tests.acceptance.conftest import CONVERSATIONS, PER_CONVERSATION
from tests.acceptance.harness import LoadGenerator
from tests.conftest import RedisServer, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.acceptance


#: How long the database is away in the outage test, in seconds.
OUTAGE_S = 12


def _run_load(gen: LoadGenerator, plan: list[tuple[str, str]]) -> threading.Thread:
    thread = threading.Thread(target=gen.run, args=(plan,), daemon=True)
    thread.start()
    return thread


def _persisted() -> int:
    return Message.objects.count()


def _no_dead_letters() -> None:
    assert get_broker().dead_letters("messages") == []
    assert DeadLetter.objects.count() == 0


def test_sigkilled_worker_processes_lose_nothing_and_keep_order(stack, services):
    env = stack.env()
    api, port = harness.api_server(env, stack.log_dir)
    workers = harness.workers(env, stack.log_dir, processes=2)
    services += [api, workers]
    gen = LoadGenerator(port, stack.token)
    load = _run_load(gen, stack.plan())

    def restarts() -> int:
        return sum("restarting it" in line for line in workers.log_lines())

    for kill in range(3):
        wait_for(lambda k=kill: _persisted() >= 300 * (k + 1), timeout=120, what="progress before a kill")
        victim = random.choice(wait_for(workers.children, timeout=30, what="worker processes"))
        os.kill(victim, signal.SIGKILL)
        # the next kill aims at a live process, not at this one before it is reaped
        wait_for(
            lambda k=kill: restarts() >= k + 1, timeout=30, what="runworkers to restart the killed process"
        )
    load.join(timeout=300)
    assert len(gen.acks) == CONVERSATIONS * PER_CONVERSATION
    harness.wait_until_persisted(len(gen.acks))
    harness.assert_every_ack_persisted_once_in_order(gen.acks)
    _no_dead_letters()
    assert restarts() == 3


def test_graceful_restart_of_all_workers_loses_nothing(stack, services):
    env = stack.env()
    api, port = harness.api_server(env, stack.log_dir)
    first = harness.workers(env, stack.log_dir, processes=2)
    services += [api, first]
    gen = LoadGenerator(port, stack.token)
    load = _run_load(gen, stack.plan())

    wait_for(lambda: _persisted() >= 500, timeout=120, what="progress before the restart")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0
    second = harness.workers(env, stack.log_dir, processes=2)
    services.append(second)
    load.join(timeout=300)
    harness.wait_until_persisted(len(gen.acks))
    harness.assert_every_ack_persisted_once_in_order(gen.acks)
    _no_dead_letters()


def test_database_outage_pauses_persistence_and_dead_letters_nothing(stack, services):
    db = connection.settings_dict
    proxy = TcpProxy(int(db["PORT"]))
    try:
        api_env = stack.env()
        worker_env = stack.env(DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}")
        api, port = harness.api_server(api_env, stack.log_dir)
        workers = harness.workers(worker_env, stack.log_dir, processes=2)
        services += [api, workers]
        gen = LoadGenerator(port, stack.token)
        load = _run_load(gen, stack.plan())

        wait_for(lambda: _persisted() >= 300, timeout=120, what="progress before the outage")
        proxy.cut()
        cut_at = time.monotonic()
        during = _persisted()
        load.join(timeout=300)  # ingress keeps acknowledging while the workers' database is away
        assert len(gen.acks) == CONVERSATIONS * PER_CONVERSATION
        # The fault is a 12-second outage: hold it for its whole length.
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
        # Nothing was persisted meanwhile but the batches whose commit was under way.
        assert _persisted() <= during + 16 * 10
        proxy.heal()
        harness.wait_until_persisted(len(gen.acks))
        harness.assert_every_ack_persisted_once_in_order(gen.acks)
        _no_dead_letters()
    finally:
        proxy.close()


def test_redis_restart_with_aof_loses_no_acknowledged_message(stack, services, redis_server):
    server: RedisServer = redis_server("--appendonly", "yes", "--appendfsync", "always")
    env = stack.env(REDIS_URL=server.url)
    api, port = harness.api_server(env, stack.log_dir)
    workers = harness.workers(env, stack.log_dir, processes=2)
    services += [api, workers]
    gen = LoadGenerator(port, stack.token)
    load = _run_load(gen, stack.plan())

    # Mid-stream on both sides: clients still sending, workers still persisting.
    total = CONVERSATIONS * PER_CONVERSATION
    wait_for(
        lambda: len(gen.acks) >= total // 3 and _persisted() >= 100,
        timeout=120,
        what="progress before the restart",
    )
    server.stop(kill=True)  # a crash: only what was fsynced survives (appendfsync always)
    # Down until the clients have seen it (503s they retry with their keys), then back.
    wait_for(lambda: gen.retries > 0, timeout=60, what="clients seeing the outage")
    server.start()
    load.join(timeout=300)
    assert len(gen.acks) == total
    harness.wait_until_persisted(len(gen.acks))
    harness.assert_every_ack_persisted_once_in_order(gen.acks)
    assert server.client().keys("*:dead") == []


def test_poison_messages_are_dead_lettered_their_conversations_go_on_and_requeue_restores_them(
    stack, services, poison_trigger
):
    poisoned = set(stack.conversations[:3])
    env = stack.env(STREAM_MAX_RETRIES="2")
    api, port = harness.api_server(env, stack.log_dir)
    workers = harness.workers(env, stack.log_dir, processes=2)
    services += [api, workers]
    gen = LoadGenerator(port, stack.token)
    gen.run(stack.plan(lambda c, i: f"{c}:{i}:POISON" if c in poisoned and i == 10 else f"{c}:{i}"))

    total = CONVERSATIONS * PER_CONVERSATION
    harness.wait_until_persisted(total - 3)
    wait_for(lambda: DeadLetter.objects.count() == 3, timeout=60, what="three mirrored dead letters")
    poison_ids = {a.message_id for a in gen.acks if "POISON" in a.content}
    dead = list(DeadLetter.objects.all())
    assert {d.message_id for d in dead} == poison_ids
    assert {d.reason for d in dead} == {"max_retries"} and {d.attempts for d in dead} == {3}
    assert {d.seq for d in dead} == {11}
    # their conversations went on past them
    assert all(Message.objects.filter(conversation_id=c, seq=PER_CONVERSATION).exists() for c in poisoned)

    poison_trigger()  # the fix
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_deadletter", "change_deadletter"])
    )
    admin = Client()
    admin.force_login(staff)
    response = admin.post(
        "/admin/delivery/deadletter/",
        {"action": "requeue", "_selected_action": [d.pk for d in dead]},
    )
    assert response.status_code == 302
    harness.wait_until_persisted(total)
    harness.assert_every_ack_persisted_once_in_order(gen.acks, allow_late=poison_ids)
    for message_id in poison_ids:
        message = Message.objects.get(pk=message_id)
        assert message.seq == 11 and message.content.endswith("POISON")
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"requeued"}
    assert set(DeadLetter.objects.values_list("status_changed_by__username", flat=True)) == {"ops"}


#: What "answered fast" means during an outage (SPEC §2: within 5 s), in seconds.
ANSWER_WITHIN_S = 5.0

#: How long a black hole lasts in the partition tests, in seconds: longer than a lease
#: (3 s), so partitions change hands when it heals.
PARTITION_S = 8


def _timed(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, Any, float]:
    """One request on a fresh connection: (status, headers and JSON body, seconds taken)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        data = response.read()
        answer = (dict(response.getheaders()), json.loads(data) if data else None)
        return response.status, answer, time.monotonic() - started
    finally:
        conn.close()


def _assert_unavailable_fast(port: int, stack, conversation_id: str) -> None:
    """A POST and ``/readyz`` are answered 503 JSON (with ``Retry-After`` on the POST)
    within :data:`ANSWER_WITHIN_S`."""
    status, (headers, body), took = _timed(
        port, "POST", "/api/v1/messages", stack.token, {"conversation_id": conversation_id, "content": "x"}
    )
    assert (status, took < ANSWER_WITHIN_S) == (503, True), (status, body, took)
    assert body["code"] == "service_unavailable" and int(headers["Retry-After"]) >= 1
    status, (_, body), took = _timed(port, "GET", "/readyz", stack.token)
    assert (status, took < ANSWER_WITHIN_S) == (503, True), (status, body, took)
    assert body["status"] == "unavailable" and "unavailable" in body["checks"].values()
    assert not any(hint in json.dumps(body) for hint in ("127.0.0.1", "port", "postgres", "redis://"))


def test_redis_black_hole_is_answered_fast_and_workers_resume_after_it(stack, services):
    proxy = TcpProxy(int(urlsplit(stack.redis_url).port or 6379))
    try:
        db = urlsplit(stack.redis_url).path
        env = stack.env(REDIS_URL=f"redis://127.0.0.1:{proxy.port}{db}")
        api, port = harness.api_server(env, stack.log_dir)
        workers = harness.workers(env, stack.log_dir, processes=2)
        services += [api, workers]
        gen = LoadGenerator(port, stack.token)
        load = _run_load(gen, stack.plan())

        wait_for(lambda: _persisted() >= 300, timeout=120, what="progress before the partition")
        proxy.black_hole()
        holed_at = time.monotonic()
        _assert_unavailable_fast(port, stack, stack.conversations[0])
        time.sleep(max(0.0, PARTITION_S - (time.monotonic() - holed_at)))  # the fault's length
        proxy.heal()
        load.join(timeout=300)
        assert len(gen.acks) == CONVERSATIONS * PER_CONVERSATION
        harness.wait_until_persisted(len(gen.acks))
        harness.assert_every_ack_persisted_once_in_order(gen.acks)
        _no_dead_letters()
    finally:
        proxy.close()


def test_database_black_hole_is_answered_fast_and_workers_resume_after_it(stack, services):
    db = connection.settings_dict
    proxy = TcpProxy(int(db["PORT"]))
    try:
        env = stack.env(DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}")
        api, port = harness.api_server(env, stack.log_dir)
        workers = harness.workers(env, stack.log_dir, processes=2)
        services += [api, workers]
        gen = LoadGenerator(port, stack.token)
        load = _run_load(gen, stack.plan())

        wait_for(lambda: _persisted() >= 300, timeout=120, what="progress before the partition")
        proxy.black_hole()
        holed_at = time.monotonic()
        during = _persisted()
        _assert_unavailable_fast(port, stack, stack.conversations[0])
        time.sleep(max(0.0, PARTITION_S - (time.monotonic() - holed_at)))  # the fault's length
        assert _persisted() <= during + 16 * 10  # only the batches whose commit was under way
        proxy.heal()
        load.join(timeout=300)
        assert len(gen.acks) == CONVERSATIONS * PER_CONVERSATION
        harness.wait_until_persisted(len(gen.acks))
        harness.assert_every_ack_persisted_once_in_order(gen.acks)
        _no_dead_letters()
    finally:
        proxy.close()
