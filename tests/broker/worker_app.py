"""A worker process for the broker's multi-process tests (no Django).

``python -m tests.broker.worker_app URL NAMESPACE [--threads N] [--sleep-ms MS]`` consumes
queue ``ordered`` and records, for every message, which process ran it and when, in the
Redis list ``log``. SIGTERM stops it gracefully (finish, ack, release leases, exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

import dramatiq
import redis
from dramatiq import Worker

from brokers import RedisStreamsBroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()

    broker = RedisStreamsBroker(args.url, namespace=args.namespace, partitions=args.partitions)
    log = redis.Redis.from_url(args.url)
    pid = os.getpid()

    @dramatiq.actor(broker=broker, queue_name="ordered", max_retries=100, min_backoff=10, max_backoff=100)
    def record(key: str, i: int) -> None:
        start = time.time()
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
        log.rpush("log", json.dumps({"key": key, "i": i, "pid": pid, "start": start, "end": time.time()}))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = Worker(broker, worker_threads=args.threads)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop()
    broker.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
