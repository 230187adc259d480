"""Celery on Redis (threads pool). Worker: ``celery -A benchmarks.peer_apps.celery_app
worker -P threads -c N -Q <namespace>``; the environment names Redis and the namespace."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from benchmarks.peer_apps import JOB_NAME, done_key, from_environment


def build(url: str, namespace: str) -> tuple[Celery, Any]:
    """The Celery app (its default queue named ``namespace``) and the job's task."""
    celery = Celery("bench", broker=url)
    celery.conf.update(
        task_ignore_result=True,
        task_default_queue=namespace,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    client = redis.Redis.from_url(url)
    key = done_key(namespace)

    @celery.task(name=JOB_NAME)
    def job(ordering_key: str) -> None:
        client.incr(key)

    return celery, job


app, _job = build(*from_environment()[:2])
