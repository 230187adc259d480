"""Ours (``RedisStreamsBroker``, ordered per key) and stock Dramatiq (``RedisBroker``).

Worker: ``python -m benchmarks.peer_apps.dramatiq_app ours|stock --threads N`` (the
environment names Redis and the namespace); SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peer_apps import JOB_NAME, done_key, from_environment
from brokers import RedisStreamsBroker


def build(kind: str, url: str, namespace: str) -> tuple[dramatiq.Broker, dramatiq.Actor[Any, Any]]:
    """The broker of ``kind`` (``ours`` or ``stock``) and the job's actor."""
    broker: dramatiq.Broker
    if kind == "ours":
        broker = RedisStreamsBroker(url, namespace=namespace)
    else:
        broker = RedisBroker(url=url, namespace=namespace)
    client = redis.Redis.from_url(url)
    key = done_key(namespace)

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name=JOB_NAME)
    def job(ordering_key: str) -> None:
        client.incr(key)

    return broker, job


def send(actor: dramatiq.Actor[Any, Any], ordering_key: str) -> None:
    """Enqueue one job (ours: ordered by ``ordering_key``; stock ignores the option)."""
    actor.send_with_options(args=(ordering_key,), partition_key=ordering_key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ours", "stock"])
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    url, namespace, _ = from_environment()
    broker, _ = build(args.kind, url, namespace)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker(broker, worker_threads=args.threads)
    worker.start()
    stop.wait()
    worker.stop()
    broker.close()


if __name__ == "__main__":
    main()
