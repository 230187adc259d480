"""``manage.py deadletters`` as an operator runs it (a subprocess): one line per error, no
traceback, and it says which Redis it reads without showing the password; its settings and
the retention purge."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from delivery.models import DeadLetter
from messaging_project import launch
from messaging_project.config import ConfigError, load_config
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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEAD_LETTER_REDRIVE_RATE", "0"),
        ("DEAD_LETTER_REDRIVE_RATE", "fast"),
        ("DEAD_LETTER_RETENTION_DAYS", "-1"),
    ],
)
def test_a_bad_dead_letter_setting_is_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})
    assert load_config({}).dead_letter_redrive_rate == 500
    assert load_config({}).dead_letter_retention_days == 30


def test_purge_deletes_rows_past_retention_and_refuses_to_guess_when_retention_is_off(
    transactional_db, project_broker, settings
):
    long_ago = timezone.now() - timedelta(days=40)
    for i, (status, changed) in enumerate(
        [("requeued", long_ago), ("discarded", long_ago), ("discarded", timezone.now()), ("dead", None)]
    ):
        DeadLetter.objects.create(
            queue="messages",
            partition=0,
            dead_letter_id=f"{i + 1}-0",
            message_id=f"m{i}",
            reason="max_retries",
            dead_lettered_at=long_ago,
            status=status,
            status_changed_at=changed,
        )
    out = StringIO()
    call_command("deadletters", "purge", stdout=out, stderr=StringIO())  # 30 days by default
    assert "Deleted 2 " in out.getvalue()
    assert sorted(DeadLetter.objects.values_list("message_id", flat=True)) == ["m2", "m3"]

    settings.DEAD_LETTER_RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="DEAD_LETTER_RETENTION_DAYS"):
        call_command("deadletters", "purge", stderr=StringIO())
    call_command("deadletters", "purge", "--older-than", "0s", stdout=out, stderr=StringIO())
    assert sorted(DeadLetter.objects.values_list("message_id", flat=True)) == ["m3"]
