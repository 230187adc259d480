"""``manage.py serve``, the README's first command: the whole service on embedded defaults
(SQLite, the API, the workers), a message posted and persisted, Ctrl-C stops it cleanly."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from messaging_project import launch
from tests.acceptance import harness
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.acceptance

TOKEN_LINE = re.compile(r"Authorization: Token (\w+)")


def _token(lines: list[str]) -> str | None:
    for line in lines:
        match = TOKEN_LINE.search(line)
        if match:
            return match.group(1)
    return None


def _get(port: int, path: str, token: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Token {token}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _get_raw(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_serve_persists_a_message_on_sqlite_and_stops_on_ctrl_c(tmp_path, redis_client, redis_url):
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env = harness.project_env(database_url=database_url, redis_url=redis_url, STREAM_NAMESPACE="serve-test")
    service = harness.Service("serve", launch.manage_argv("serve", "--port", str(port)), env, tmp_path)
    service.start()
    try:
        token = wait_for(lambda: _token(service.log_lines()), timeout=120, what="the demo user's API token")
        wait_for(lambda: launch.answers_ok(port, "/healthz"), timeout=60, what="the API")
        client = harness.LoadGenerator(port, token)
        status, conversation = client.post("/api/v1/conversations", {"participants": []})
        assert status == 201, conversation
        ack = client.send(conversation["id"], "hello from the quick start")
        assert ack is not None and ack.seq == 1

        def persisted() -> Any:
            status, body = _get(port, f"/api/v1/messages/{ack.message_id}", token)
            return body if status == 200 and body["state"] == "persisted" else None

        body = wait_for(persisted, timeout=60, what="the message persisted")
        assert (body["content"], body["seq"], body["sender"]) == ("hello from the quick start", 1, "demo")

        # Swagger UI's page and its scripts come from this server (collected static files), no CDN
        status, page = _get_raw(port, "/api/docs/")
        scripts = re.findall(r'src="([^"]+)"', page)
        assert status == 200 and scripts and all(src.startswith("/static/") for src in scripts), page
        assert all(_get_raw(port, src)[0] == 200 for src in scripts)
    finally:
        service.signal(signal.SIGINT)
        code = service.wait(timeout=90)
    assert code == 0, "\n".join(service.log_lines()[-30:])


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found: set[int] = set()
    parents = [pid]
    while parents:
        out = subprocess.run(["pgrep", "-P", str(parents.pop())], capture_output=True, text=True)
        children = {int(p) for p in out.stdout.split()}
        found |= children
        parents += children
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


def _make_run(tmp_path, env: dict[str, str], port: int, name: str) -> harness.Service:
    venv = Path(sys.executable).parent.parent
    # -o: the venv is installed already (the test runs in it); make must not reinstall it.
    argv = ["make", "-s", "-o", f"{venv}/.installed", f"VENV={venv}", f"PORT={port}", "run"]
    return harness.Service(name, argv, env, tmp_path)


def test_sigint_to_make_run_itself_stops_every_process_and_a_second_run_prints_the_token_again(
    tmp_path, redis_client, redis_url
):
    # given `make run` serving (make, serve, gunicorn and its workers, runworkers and its worker)
    port = free_port()
    env = harness.project_env(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        redis_url=redis_url,
        STREAM_NAMESPACE="serve-make",
    )
    first = _make_run(tmp_path, env, port, "make-run-1")
    first.start()
    try:
        token = wait_for(lambda: _token(first.log_lines()), timeout=120, what="the demo user's API token")
        wait_for(lambda: launch.answers_ok(port, "/healthz"), timeout=60, what="the API")
        tree = wait_for(
            lambda: pids if len(pids := _descendants(first.pid)) >= 5 else None,
            timeout=60,
            what="the service's processes",
        )
        # when SIGINT is sent to make's own pid (not the terminal's Ctrl-C to the whole group)
        first.signal(signal.SIGINT)
        first.wait(timeout=90)
    finally:
        first.stop()
    # then every process it started is gone
    wait_for(lambda: not _alive(tree), timeout=60, what=f"processes {tree} to exit")
    assert not launch.answers_ok(port, "/healthz")

    # and a second `make run` on the same database prints the same token again
    second = _make_run(tmp_path, env, port, "make-run-2")
    second.start()
    try:
        assert wait_for(lambda: _token(second.log_lines()), timeout=120, what="the token again") == token
        wait_for(lambda: launch.answers_ok(port, "/healthz"), timeout=60, what="the API")
        tree = _descendants(second.pid)
    finally:
        second.signal(signal.SIGTERM)
        second.wait(timeout=90)
    wait_for(lambda: not _alive(tree), timeout=60, what=f"processes {tree} to exit")
