"""The project's broker, one :class:`brokers.RedisStreamsBroker` built from settings, and
the names that ingress and the workers agree on (queue, actor)."""

from __future__ import annotations

import socket
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from brokers import RedisStreamsBroker
from delivery.sequences import sequence_floor
from delivery.worker_middleware import DbConnections
from messaging_project.outages import Outage

#: The queue the persist actor consumes.
MESSAGES_QUEUE = "messages"

#: The persist actor's name (see ``delivery.actors``).
PERSIST_ACTOR = "persist_messages"


#: TCP keepalive probes of an idle Redis connection: unanswered this many times, one a
#: second after the socket timeout's worth of silence, the connection is dropped.
KEEPALIVE_PROBES = 3

#: How often a pooled connection idle this long is pinged before use, in seconds.
HEALTH_CHECK_INTERVAL_S = 30


#: Redis as this process sees it (see ``messaging_project.outages``): after a call got no answer,
#: calls fail at once for a while instead of each waiting out its own timeout.
REDIS_OUTAGE = Outage(
    "Redis", probe_s=max(settings.REDIS_SOCKET_TIMEOUT_MS, settings.REDIS_CONNECT_TIMEOUT_MS) / 1000
)


class FailFastConnection(redis.Connection):
    """A TCP connection to Redis that fails at once while :data:`REDIS_OUTAGE` says Redis
    is silent, and tells it when a call timed out or got an answer."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None:
            _fail_fast()
        try:
            super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except redis.TimeoutError:
            REDIS_OUTAGE.timed_out()
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _fail_fast()
        super().send_packed_command(command, check_health=check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)
        except redis.TimeoutError:
            REDIS_OUTAGE.timed_out()
            raise
        REDIS_OUTAGE.answered()
        return response


def _fail_fast() -> None:
    reason = REDIS_OUTAGE.check()
    if reason is not None:
        raise redis.ConnectionError(reason)


def redis_client() -> redis.Redis | RedisCluster:
    """A Redis client for ``REDIS_URL`` that gives up in bounded time.

    A call that gets no answer within ``REDIS_SOCKET_TIMEOUT_MS`` (a partition, a hung
    server) fails with ``redis.TimeoutError`` and is not retried (redis-py 8 retries ten
    times by default); calls then fail at once for a second (:data:`REDIS_OUTAGE`), so the
    caller answers 503 or pauses instead of stacking timeouts. A connection found broken
    (refused, reset: Redis restarted since the last use) is retried once, at once.
    """
    options: dict[str, object] = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT_MS / 1000,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT_MS / 1000,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if urlsplit(settings.REDIS_URL).scheme == "redis":
        options["connection_class"] = FailFastConnection
    if urlsplit(settings.REDIS_URL).scheme != "unix":
        idle_s = max(1, round(settings.REDIS_SOCKET_TIMEOUT_MS / 1000))
        options["socket_keepalive"] = True
        options["socket_keepalive_options"] = {
            socket.TCP_KEEPIDLE: idle_s,
            socket.TCP_KEEPINTVL: 1,
            socket.TCP_KEEPCNT: KEEPALIVE_PROBES,
        }
    if settings.REDIS_CLUSTER:
        # Any one node is the seed; the client learns the rest. A failover (a master gone,
        # its replica promoted) costs a few refused calls and a fresh slot map.
        options.pop("health_check_interval")
        return RedisCluster.from_url(settings.REDIS_URL, **options)
    return redis.Redis.from_url(settings.REDIS_URL, **options)


@cache
def get_broker() -> RedisStreamsBroker:
    """The process's broker (also installed as Dramatiq's global broker)."""
    broker = RedisStreamsBroker(
        client=redis_client(),
        partitions=settings.STREAM_PARTITIONS,
        namespace=settings.STREAM_NAMESPACE,
        poll_interval_ms=settings.STREAM_POLL_INTERVAL_MS,
        fetch_count=max(10, settings.STREAM_BATCH_SIZE),
        idempotency_grace_ms=settings.IDEMPOTENCY_GRACE_MS,
        min_replicas_ack=settings.REDIS_MIN_REPLICAS_ACK,
        # WAIT answers within this, well inside the socket timeout that bounds the call.
        replicas_ack_timeout_ms=max(10, settings.REDIS_SOCKET_TIMEOUT_MS // 2),
        sequence_floor=sequence_floor,
    )
    broker.add_middleware(DbConnections())
    dramatiq.set_broker(broker)
    return broker
