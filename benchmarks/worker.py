"""A worker process of the ``scaling`` scenario (no Django): our broker and one actor whose
job is one Redis call, ``HINCRBY <namespace>:progress <partition> 1``, so the scenario can
follow every partition's progress from outside.

``python -m benchmarks.worker URL NAMESPACE [--threads N] [--partitions P]``; prints
``ready`` once its Worker runs; SIGTERM stops it (finish, ack, release leases, exit 0).
"""

from __future__ import annotations

import argparse
import signal
import threading

import dramatiq
import redis
from dramatiq import Worker

from brokers import RedisStreamsBroker

#: The queue and actor of the scaling scenario.
QUEUE = "bench"
ACTOR = "bench_progress"


def progress_key(namespace: str) -> str:
    """The hash counting finished jobs per partition."""
    return f"{namespace}:progress"


def build_broker(url: str, namespace: str, partitions: int) -> tuple[RedisStreamsBroker, dramatiq.Actor]:
    """The broker and the actor (the scenario enqueues through the same pair)."""
    broker = RedisStreamsBroker(url, namespace=namespace, partitions=partitions)
    client = redis.Redis.from_url(url)
    key = progress_key(namespace)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ACTOR)
    def bench_progress(partition: int) -> None:
        client.hincrby(key, str(partition), 1)

    return broker, bench_progress


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()
    broker, _ = build_broker(args.url, args.namespace, args.partitions)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = Worker(broker, worker_threads=args.threads)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop()
    broker.close()


if __name__ == "__main__":
    main()
