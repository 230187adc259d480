"""Procrastinate (PostgreSQL). Worker: ``procrastinate --app
benchmarks.peer_apps.procrastinate_app.app worker --concurrency N``; the environment names
Redis, the namespace and the database (its own: the scenario applies the schema)."""

from __future__ import annotations

from typing import Any

import procrastinate
import redis

from benchmarks.peer_apps import JOB_NAME, done_key, from_environment


def build(url: str, namespace: str, database_url: str) -> tuple[procrastinate.App, Any]:
    """The app on ``database_url`` and the job's (sync) task."""
    procrastinate_app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=database_url))
    client = redis.Redis.from_url(url)
    key = done_key(namespace)

    @procrastinate_app.task(name=JOB_NAME)
    def job(ordering_key: str) -> None:
        client.incr(key)

    return procrastinate_app, job


app, _job = build(*from_environment())
