"""A worker process for the broker's multi-process tests (no Django).

``python -m tests.broker.worker_app URL NAMESPACE [--threads N] [--sleep-ms MS] ...`` consumes
queue ``ordered`` and records, for every message, which process ran it and when, in the
Redis list ``log`` (and, before running it, in ``started``). SIGTERM stops it gracefully
(finish, ack, release leases, exit 0). ``--crash-on KEY`` makes the messages of ``KEY``
SIGKILL the process running them (a message that kills its worker: OOM, segfault).
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
    parser.add_argument("--lease-ttl-ms", type=int, default=3000)
    parser.add_argument("--crash-on", default=None)
    parser.add_argument("--max-deliveries", type=int, default=None)
    args = parser.parse_args()

    broker = RedisStreamsBroker(
        args.url,
        namespace=args.namespace,
        partitions=args.partitions,
        lease_ttl_ms=args.lease_ttl_ms,
        heartbeat_interval_ms=args.lease_ttl_ms // 3,
    )
    log = redis.Redis.from_url(args.url)
    pid = os.getpid()

    options = {} if args.max_deliveries is None else {"max_deliveries": args.max_deliveries}

    @dramatiq.actor(
        broker=broker, queue_name="ordered", max_retries=100, min_backoff=10, max_backoff=100, **options
    )
    def record(key: str, i: int) -> None:
        start = time.time()
        log.rpush("started", json.dumps({"key": key, "i": i, "pid": pid, "start": start}))
        if key == args.crash_on:
            os.kill(pid, signal.SIGKILL)
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
