"""Scenario ``broker``: our broker against Dramatiq's stock Redis broker, a no-op actor."""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
from django.conf import settings
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from benchmarks.processes import cpu_self, self_peak_rss_mb
from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, median, redis_used_memory
from brokers import RedisStreamsBroker

#: Keys the broker scenario spreads its messages over.
BROKER_KEYS = 100


def _round(broker: dramatiq.Broker, messages: int, threads: int) -> dict[str, float]:
    done = [0]
    lock = threading.Lock()
    finished = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_noop")
    def noop(key: str, i: int) -> None:
        with lock:
            done[0] += 1
            if done[0] == messages:
                finished.set()

    def produce(offset: int) -> None:
        for i in range(offset, messages, threads):
            key = f"key-{i % BROKER_KEYS}"
            noop.send_with_options(args=(key, i), partition_key=key)

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    memory0 = redis_used_memory()
    cpu0, started = cpu_self(), time.perf_counter()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    enqueue_s, enqueue_cpu = time.perf_counter() - started, cpu_self() - cpu0
    queued_bytes = redis_used_memory() - memory0
    worker = Worker(broker, worker_threads=threads)
    cpu0, started = cpu_self(), time.perf_counter()
    worker.start()
    if not finished.wait(timeout=600):
        raise BenchmarkError("the consumers did not finish within 10 minutes")
    consume_s, consume_cpu = time.perf_counter() - started, cpu_self() - cpu0
    worker.stop()
    broker.close()
    return {
        "enqueue_per_s": messages / enqueue_s,
        "consume_per_s": messages / consume_s,
        "enqueue_cpu_s": enqueue_cpu,
        "consume_cpu_s": consume_cpu,
        # Redis memory the queued messages took (used_memory before and after enqueuing)
        "redis_bytes_per_message": queued_bytes / messages,
    }


def run_broker(messages: int, rounds: int, threads: int, progress: Progress) -> Report:
    """Enqueue and consume rates of both brokers, and the Redis memory a message takes."""
    partitions = settings.STREAM_PARTITIONS
    report = Report("broker")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "keys": BROKER_KEYS,
        "partitions": partitions,
        "what": f"T producer threads enqueue N messages (partition key = one of {BROKER_KEYS} keys), then a "
        "Dramatiq Worker with T threads consumes them with a no-op actor; ours: RedisStreamsBroker (ordered "
        "per key), baseline: dramatiq RedisBroker on the same Redis; rounds alternate",
    }
    ours: list[dict[str, float]] = []
    stock: list[dict[str, float]] = []
    for r in range(rounds):
        for name, results in (("ours", ours), ("baseline", stock)):
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            progress(f"broker round {r + 1}/{rounds}: {name}")
            broker: dramatiq.Broker
            if name == "ours":
                broker = RedisStreamsBroker(settings.REDIS_URL, namespace=namespace, partitions=partitions)
            else:
                broker = RedisBroker(url=settings.REDIS_URL, namespace=namespace)
            try:
                results.append(_round(broker, messages, threads))
            finally:
                drop_namespace(namespace)
            report.rounds.append({"system": name, **results[-1]})
    enqueue = median([o["enqueue_per_s"] for o in ours])
    consume = median([o["consume_per_s"] for o in ours])
    base_enqueue = median([s["enqueue_per_s"] for s in stock])
    base_consume = median([s["consume_per_s"] for s in stock])
    report.figures = {
        "enqueue_per_s": round(enqueue),
        "consume_per_s": round(consume),
        "baseline_enqueue_per_s": round(base_enqueue),
        "baseline_consume_per_s": round(base_consume),
        "enqueue_ratio": round(enqueue / base_enqueue, 2),
        "consume_ratio": round(consume / base_consume, 2),
        "redis_bytes_per_message": round(median([o["redis_bytes_per_message"] for o in ours])),
        "baseline_redis_bytes_per_message": round(median([s["redis_bytes_per_message"] for s in stock])),
        "process_peak_rss_mb": self_peak_rss_mb(),
    }
    return report
