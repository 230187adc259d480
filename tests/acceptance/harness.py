"""The acceptance tier's tools: the real API server and ``runworkers`` as subprocesses, a
load generator that retries like a careful client, a TCP proxy to cut or black-hole a
service (``tests.tcp_proxy``), and the end-of-test checks read from the database."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection

from messaging_project import launch
from tests.conftest import free_port, project_subprocess, wait_for


class Service:
    """A subprocess of the project (API server or workers) with its own log file;
    ``argv`` is a command line of :mod:`messaging_project.launch`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = project_subprocess(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def children(self) -> list[int]:
        """Pids of this process's children (the worker processes of ``runworkers``)."""
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []


def project_env(*, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment the project's subprocesses run with."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
        "LOG_JSON": "1",
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": str(free_port()),
        # Load tests post as one user far past the default per-user rate.
        "API_THROTTLE_USER_RATE": "none",
        **extra,
    }


def api_server(env: dict[str, str], log_dir: Path, *, workers: int = 2) -> tuple[Service, int]:
    port = free_port()
    argv = launch.gunicorn_argv(bind=f"127.0.0.1:{port}", workers=workers)
    service = Service("api", argv, env, log_dir)
    service.start()
    wait_for(lambda: launch.answers_ok(port, "/healthz"), timeout=60, what="the API server")
    return service, port


def workers(env: dict[str, str], log_dir: Path, *, processes: int = 2, threads: int = 4) -> Service:
    argv = launch.runworkers_argv(processes=processes, threads=threads, shutdown_timeout_ms=20_000)
    service = Service("workers", argv, env, log_dir)
    service.start()
    return service


@dataclass
class Ack:
    """A message the API acknowledged (2xx)."""

    message_id: str
    conversation_id: str
    seq: int
    content: str
    #: ``time.monotonic()`` when the acknowledgement arrived.
    acknowledged_at: float = field(default_factory=time.monotonic)


@dataclass
class LoadGenerator:
    """Posts messages like a careful client: each with an Idempotency-Key, retried with the
    same key on connection errors and 5xx until acknowledged (bounded)."""

    port: int
    token: str
    acks: list[Ack] = field(default_factory=list)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return conn

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        payload = json.dumps(body)
        all_headers = {
            "Authorization": f"Token {self.token}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        conn = self._conn()
        try:
            conn.request("POST", path, payload, all_headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            return 0, None

    def send(self, conversation_id: str, content: str, *, deadline_s: float = 120) -> Ack | None:
        key = uuid.uuid4().hex
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            status, body = self.post(
                "/api/v1/messages",
                {"conversation_id": conversation_id, "content": content},
                {"Idempotency-Key": key},
            )
            if status in (200, 202):
                ack = Ack(body["message_id"], conversation_id, body["seq"], content)
                with self._lock:
                    self.acks.append(ack)
                return ack
            if 400 <= status < 500:
                raise AssertionError(f"ingress refused a valid message: {status} {body}")
            with self._lock:
                self.retries += 1
            time.sleep(0.05)
        return None

    def run(self, plan: Iterable[tuple[str, str]], *, threads: int = 8) -> None:
        """Send ``(conversation_id, content)`` pairs; each conversation in its own order."""
        by_conversation: dict[str, list[str]] = defaultdict(list)
        for conversation_id, content in plan:
            by_conversation[conversation_id].append(content)

        def one_conversation(item: tuple[str, list[str]]) -> None:
            conversation_id, contents = item
            for content in contents:
                self.send(conversation_id, content)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one_conversation, by_conversation.items()))


def persisted_rows() -> list[tuple[str, str, int, Any]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, conversation_id, seq, persisted_at FROM delivery_message")
        return [(str(i), str(c), s, p) for i, c, s, p in cursor.fetchall()]


def assert_every_ack_persisted_once_in_order(acks: list[Ack], *, allow_late: set[str] | None = None) -> None:
    """Every acknowledged message is persisted exactly once; each conversation's rows are in
    ``seq`` order and were persisted in ``seq`` order (``allow_late``: requeued ids)."""
    rows = persisted_rows()
    by_id = {r[0]: r for r in rows}
    assert len(by_id) == len(rows)
    missing = [a for a in acks if a.message_id not in by_id]
    assert not missing, f"{len(missing)} acknowledged messages were not persisted, e.g. {missing[:3]}"
    acked_ids = {a.message_id for a in acks}
    assert len(acked_ids) == len(acks)  # every POST had its own key: one message each
    for ack in acks:
        _, conversation_id, seq, _ = by_id[ack.message_id]
        assert (conversation_id, seq) == (ack.conversation_id, ack.seq)
    by_conversation: dict[str, list[tuple[Any, int, str]]] = defaultdict(list)
    for message_id, conversation_id, seq, persisted_at in rows:
        if allow_late and message_id in allow_late:
            continue
        by_conversation[conversation_id].append((persisted_at, seq, message_id))
    for conversation_id, items in by_conversation.items():
        seqs_by_time = [seq for _, seq, _ in sorted(items)]
        assert seqs_by_time == sorted(seqs_by_time), (
            f"conversation {conversation_id} persisted out of seq order"
        )


def wait_until_persisted(count: int, timeout: float = 180) -> None:
    def done() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM delivery_message")
            return int(cursor.fetchone()[0]) >= count

    wait_for(done, timeout=timeout, interval=0.2, what=f"{count} persisted messages")
