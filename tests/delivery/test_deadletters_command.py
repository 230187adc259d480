"""``manage.py deadletters`` as an operator runs it (a subprocess): one line per error, no
traceback, and it says which Redis it reads without showing the password."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from django.db import connection

from messaging_project import launch
from tests.conftest import RedisServer, project_subprocess


def _deadletters(*args: str, **env: str) -> tuple[int, str, str]:
    db = connection.settings_dict
    full_env = {
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
        "LOG_JSON": "0",
        **env,
    }
    process = project_subprocess(
        launch.manage_argv("deadletters", *args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = process.communicate(timeout=120)
    return process.returncode, out.decode(), err.decode()


def test_a_bad_older_than_is_one_line_naming_the_option(transactional_db, redis_url):
    code, out, err = _deadletters("list", "--older-than", "10x", REDIS_URL=redis_url)
    assert code != 0 and out == ""
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "CommandError: --older-than '10x': use a number and a unit, like 30s, 10m, 2h or 7d"
    ]


def test_a_bad_setting_is_one_line_naming_the_variable_and_a_non_zero_exit(transactional_db, redis_url):
    code, out, err = _deadletters("list", REDIS_URL=redis_url, STREAM_PARTITIONS="abc")
    assert code != 0 and out == ""
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "ImproperlyConfigured: Bad configuration: STREAM_PARTITIONS='abc' is invalid: "
        "expected an integer from 1 to 1024"
    ]


def test_the_command_says_which_redis_it_reads_with_the_password_redacted(
    transactional_db, redis_server: Callable[..., RedisServer]
):
    server = redis_server()
    server.client().config_set("requirepass", "s3cret-pass")  # after the fixture's ready check
    code, out, err = _deadletters("list", REDIS_URL=f"redis://:s3cret-pass@127.0.0.1:{server.port}/2")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"Dead letters of redis://:***@127.0.0.1:{server.port}/2 (namespace delivery)"
    ]
    assert "s3cret" not in out + err
    assert out.strip() == "No dead letters."
