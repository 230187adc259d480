"""Find (or start) the PostgreSQL and Redis the tests run against."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from typing import Any

import psycopg
import redis

#: The local services this machine (and CI) runs.
LOCAL_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/delivery"
#: Database 15 of the local Redis is the tests' own; it is flushed before every test.
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"

START_HINT = (
    "Start them (PostgreSQL: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; "
    "Redis: `redis-server --daemonize yes --port 6379 --save '' --appendonly no`), or set DATABASE_URL "
    "and REDIS_URL, or run Docker so testcontainers can start them."
)

_containers: list[Any] = []


def _postgres_answers(url: str) -> bool:
    conninfo = url.replace("postgres://", "postgresql://", 1).rsplit("/", 1)[0] + "/postgres"
    try:
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=3).ping())
    except redis.RedisError:
        return False


def _docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def resolve_services() -> dict[str, str]:
    """Environment variables pointing at a PostgreSQL and a Redis that answer."""
    database_url = os.environ.get("DATABASE_URL") or LOCAL_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or LOCAL_REDIS_URL
    pg_ok, redis_ok = _postgres_answers(database_url), _redis_answers(redis_url)
    if pg_ok and redis_ok:
        return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    if _docker_runs():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

        if not pg_ok:
            pg = PostgresContainer("postgres:16-alpine", driver=None).start()
            _containers.append(pg)
            database_url = pg.get_connection_url().replace("postgresql://", "postgres://", 1)
        if not redis_ok:
            rc = RedisContainer("redis:7-alpine").start()
            _containers.append(rc)
            redis_url = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/15"
        atexit.register(lambda: [c.stop() for c in _containers])
        return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    missing = [
        name
        for name, ok in (("PostgreSQL at " + database_url, pg_ok), ("Redis at " + redis_url, redis_ok))
        if not ok
    ]
    raise RuntimeError(f"The tests need {' and '.join(missing)}, which did not answer. {START_HINT}")
