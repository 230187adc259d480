"""``manage.py runworkers``: start-up (waiting for its services, switched off, a bad
setting, a metrics port taken), where its metrics listen, and stopping during a partition."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connection

from delivery.broker import get_broker
from messaging_project import launch
from tests.acceptance import harness
from tests.conftest import free_port, project_subprocess, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.acceptance


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_runworkers_waits_for_an_unreachable_redis_and_says_so(transactional_db, tmp_path):
    env = harness.project_env(database_url=_database_url(), redis_url="redis://127.0.0.1:1/0")
    workers = harness.Service("workers", launch.manage_argv("runworkers", "-p", "1"), env, tmp_path)
    workers.start()
    try:
        wait_for(
            lambda: any("Waiting for Redis at redis://127.0.0.1:1/0" in line for line in workers.log_lines()),
            timeout=30,
            what="the wait message",
        )
        assert workers.process is not None and workers.process.poll() is None  # no crash loop
    finally:
        workers.signal(signal.SIGTERM)
    assert workers.wait(timeout=30) == 0


def test_runworkers_starts_nothing_when_consumers_are_disabled(transactional_db, redis_url):
    env = harness.project_env(
        database_url=_database_url(), redis_url=redis_url, ENABLE_STREAM_CONSUMERS="false"
    )
    process = project_subprocess(
        launch.manage_argv("runworkers"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"ENABLE_STREAM_CONSUMERS is off" in out


def test_a_bad_setting_stops_start_up_with_a_message_naming_it(redis_url):
    env = {"STREAM_PARTITIONS": "abc", "DJANGO_SETTINGS_MODULE": "messaging_project.settings"}
    process = project_subprocess(
        launch.manage_argv("runworkers"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"STREAM_PARTITIONS='abc' is invalid" in out


def test_runworkers_whose_metrics_port_is_taken_says_so_in_one_line_and_exits_non_zero(
    transactional_db, redis_url
):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = harness.project_env(database_url=_database_url(), redis_url=redis_url, METRICS_PORT=str(port))
        process = project_subprocess(
            launch.manage_argv("runworkers", "-p", "1"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "METRICS_PORT" in lines[0] and str(port) in lines[0] and "Traceback" not in lines[0]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses on which something listens on TCP ``port`` (from /proc)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_the_workers_metrics_listen_on_loopback_unless_told_otherwise(transactional_db, redis_url, tmp_path):
    port = free_port()
    env = harness.project_env(database_url=_database_url(), redis_url=redis_url, METRICS_PORT=str(port))
    workers = harness.Service("workers", launch.runworkers_argv(processes=1, threads=1), env, tmp_path)
    workers.start()
    try:
        wait_for(lambda: launch.answers_ok(port, "/metrics"), timeout=60, what="the workers' metrics")
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        workers.stop()


def test_sigterm_while_redis_is_black_holed_stops_runworkers_within_its_shutdown_timeout(
    transactional_db, redis_client, redis_url, tmp_path
):
    proxy = TcpProxy(urlsplit(redis_url).port or 6379)
    workers: harness.Service | None = None
    try:
        env = harness.project_env(
            database_url=_database_url(),
            redis_url=f"redis://127.0.0.1:{proxy.port}{urlsplit(redis_url).path}",
        )
        timeout_s = 5
        argv = launch.runworkers_argv(processes=2, threads=2, shutdown_timeout_ms=timeout_s * 1000)
        workers = harness.Service("workers", argv, env, tmp_path)
        workers.start()
        wait_for(
            lambda: sum("is ready" in line for line in workers.log_lines()) == 2,
            timeout=60,
            what="both worker processes",
        )
        # Consuming for real: both hold their membership (their lease threads run), so the
        # black hole meets a running lease heartbeat, not a consumer still starting up.
        wait_for(lambda: len(get_broker().members()) == 2, timeout=30, what="both workers' memberships")
        proxy.black_hole()
        wait_for(
            lambda: any("Lease heartbeat failed" in line for line in workers.log_lines()),
            timeout=30,
            what="the workers to notice",
        )
        stopping = time.monotonic()
        workers.signal(signal.SIGTERM)
        assert workers.wait(timeout=60) == 0
        # The timeout, plus the interpreter's own exit (about a second on this busy machine).
        assert time.monotonic() - stopping < timeout_s + 2.0
    finally:
        if workers is not None:
            workers.stop()  # a failed assertion leaves no process holding the test database
        proxy.close()
