"""taskiq-redis ``RedisStreamBroker``. Worker: ``taskiq worker
benchmarks.peer_apps.taskiq_app:broker --workers 1 --max-async-tasks N``; the environment
names Redis and the namespace."""

from __future__ import annotations

from typing import Any

import redis.asyncio
from taskiq_redis import RedisStreamBroker

from benchmarks.peer_apps import JOB_NAME, done_key, from_environment


def build(url: str, namespace: str) -> tuple[RedisStreamBroker, Any]:
    """The broker (stream and group named ``namespace``, reading from the stream's start,
    so jobs enqueued before the worker started are seen) and the job's task."""
    stream_broker = RedisStreamBroker(
        url, queue_name=namespace, consumer_group_name=namespace, consumer_id="0"
    )
    client = redis.asyncio.Redis.from_url(url)
    key = done_key(namespace)

    @stream_broker.task(task_name=JOB_NAME)
    async def job(ordering_key: str) -> None:
        await client.incr(key)

    return stream_broker, job


broker, _job = build(*from_environment()[:2])
