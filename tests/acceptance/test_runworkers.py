"""``manage.py runworkers`` start-up: waiting for its services, and switched off."""

from __future__ import annotations

import signal
import subprocess

import pytest
from django.db import connection

from messaging_project import launch
from tests.acceptance import harness
from tests.conftest import project_subprocess, wait_for

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
