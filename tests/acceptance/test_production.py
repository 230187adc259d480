"""Production defaults: the documented environment passes ``check --deploy``, a weak secret
key stops start-up in one line, and throttles are on without any setting."""

from __future__ import annotations

import http.client
import json
import secrets
import shlex
import subprocess

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token

from messaging_project import launch
from tests.acceptance import harness
from tests.conftest import ROOT, free_port, project_subprocess

pytestmark = pytest.mark.acceptance


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def documented_production_environment() -> dict[str, str]:
    """The README's production environment (its ``## Production`` block), with a real
    random key in place of the placeholder."""
    section = (ROOT / "README.md").read_text().split("\n## Production\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            name, _, value = words[0].partition("=")
            env[name] = value
    assert env.pop("DJANGO_SECRET_KEY") == "<random>"
    return {
        **env,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
    }


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = project_subprocess(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = process.communicate(timeout=120)
    return process.returncode, out.decode()


def test_check_deploy_is_clean_with_the_documented_production_environment():
    env = documented_production_environment()
    code, out = _run(launch.manage_argv("check", "--deploy", "--fail-level", "WARNING"), env)
    assert code == 0 and "System check identified no issues" in out, out
    # The same without the HTTPS settings: the check does find what is missing.
    plain = {k: v for k, v in env.items() if not k.startswith("DJANGO_SECURE_")}
    code, out = _run(launch.manage_argv("check", "--deploy", "--fail-level", "WARNING"), plain)
    assert code != 0 and all(w in out for w in ("W004", "W008", "W012", "W016")), out


@pytest.mark.parametrize("key", ["", "insecure-dev-key-change-me-in-production", "short-but-not-empty"])
def test_with_debug_off_a_missing_default_or_short_secret_key_stops_start_up_in_one_line(key):
    env = {
        "DATABASE_URL": "postgres://delivery@10.0.0.5:5432/delivery",
        "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
        "DJANGO_DEBUG": "off",
        "DJANGO_SECRET_KEY": key,
    }
    code, out = _run(launch.manage_argv("runworkers"), env)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, out
    assert "DJANGO_SECRET_KEY" in lines[0] and (not key or key not in lines[0])

    code, out = _run(launch.gunicorn_argv(bind=f"127.0.0.1:{free_port()}", workers=1), env)
    assert code != 0 and "Traceback" not in out, out
    assert [line for line in out.splitlines() if "DJANGO_SECRET_KEY" in line] == [
        line for line in out.splitlines() if "ERROR" in line
    ]


def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Token {token}"} if token else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_throttles_are_on_by_default_and_answer_429_json(transactional_db, redis_client, redis_url, tmp_path):
    env = harness.project_env(database_url=_database_url(), redis_url=redis_url)
    del env["API_THROTTLE_USER_RATE"]  # the load tests' switch: here the defaults apply
    api, port = harness.api_server(env, tmp_path, workers=1)  # one process: one count
    try:
        # Anonymous: 60/min per address (and, as DRF counts them, 50/s per address as "users").
        statuses = [_get(port, "/api/docs/")[0] for _ in range(61)]
        first_refused = statuses.index(429)
        assert set(statuses[:first_refused]) == {200} and first_refused >= 50
        status, headers, body = _get(port, "/api/docs/")
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert json.loads(body)["code"] == "throttled"
    finally:
        api.stop()

    env["API_THROTTLE_USER_RATE"] = "5/min"
    token = Token.objects.create(user=User.objects.create_user("alice", password="pw")).key
    api, port = harness.api_server(env, tmp_path, workers=1)
    try:
        statuses = [_get(port, "/api/v1/conversations", token)[0] for _ in range(6)]
        assert statuses == [200] * 5 + [429]
    finally:
        api.stop()
