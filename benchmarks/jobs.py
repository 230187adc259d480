"""One in-process round of a job queue on a Dramatiq broker: producer threads enqueue N
jobs over K keys, then a Worker runs them; the job body is one Redis call (``INCR``), the
same as in the ``peers`` scenario. Shared by ``keys`` and ``hol``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq import Worker

from benchmarks.processes import cpu_self
from benchmarks.report import BenchmarkError, redis_client

#: How long a round may take before the scenario gives up, in seconds.
ROUND_TIMEOUT_S = 600

#: The three systems ``keys`` compares: (name, broker kind, send with ``partition_key``).
SYSTEMS = (("ordered", "ours", True), ("unordered", "ours", False), ("stock", "stock", True))


@dataclass
class Finishes:
    """When each job finished (``time.monotonic()``), per key; thread-safe."""

    expected: int
    by_key: dict[str, list[float]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0

    def record(self, key: str) -> None:
        """One job of ``key`` finished now."""
        now = time.monotonic()
        with self._lock:
            self.by_key.setdefault(key, []).append(now)
            self._count += 1
            if self._count == self.expected:
                self.done.set()

    def first_and_last(self) -> tuple[float, float]:
        """The first and the last finish."""
        times = [t for ts in self.by_key.values() for t in ts]
        return min(times), max(times)


def key_names(keys: int) -> list[str]:
    """``keys`` ordering keys."""
    return [f"key-{k}" for k in range(keys)]


def consume_round(
    broker: dramatiq.Broker,
    *,
    messages: int,
    keys: list[str],
    threads: int,
    ordered: bool,
    counter: str,
    actor_options: dict[str, Any] | None = None,
    body: Callable[[str, int], None] | None = None,
    redis_call: bool = True,
) -> tuple[dict[str, float], Finishes]:
    """Enqueue ``messages`` jobs round-robin over ``keys`` (with ``partition_key`` when
    ``ordered``), then consume them with a Worker of ``threads`` threads. ``body(key, i)``
    runs before the job's Redis call (to make it fail, for example); without
    ``redis_call`` the job makes none (a no-op, as in the ``broker`` scenario)."""
    finishes = Finishes(messages)
    client = redis_client()

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_job", **(actor_options or {}))
    def job(key: str, i: int) -> None:
        if body is not None:
            body(key, i)
        if redis_call:
            client.incr(counter)
        finishes.record(key)

    def produce(offset: int) -> None:
        for i in range(offset, messages, threads):
            key = keys[i % len(keys)]
            if ordered:
                job.send_with_options(args=(key, i), partition_key=key)
            else:
                job.send_with_options(args=(key, i))

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    enqueue_s = time.perf_counter() - started
    worker = Worker(broker, worker_threads=threads)
    cpu0 = cpu_self()
    worker.start()
    try:
        if not finishes.done.wait(timeout=ROUND_TIMEOUT_S):
            raise BenchmarkError(f"the consumers did not finish within {ROUND_TIMEOUT_S} s")
        consume_cpu = cpu_self() - cpu0
    finally:
        worker.stop()
        broker.close()
    first, last = finishes.first_and_last()
    return {
        "enqueue_per_s": messages / enqueue_s,
        # From the first finished job, so that start-up (leases, first reads) is not counted.
        "consume_per_s": (messages - 1) / max(last - first, 1e-6),
        "consume_cpu_us_per_job": consume_cpu / messages * 1e6,
    }, finishes
