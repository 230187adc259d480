"""Scenario ``scaling``: steady-state consume rate with 1, 2 and 4 worker processes, and what
a joining process costs: the time from its joining until the partitions are evenly shared,
and the longest pause of the partitions that did not move meanwhile (issue 20).

Each round starts one worker process (``benchmarks.worker``, real processes) on a backlog,
waits until it leases every partition, then starts the others at once (the join), waits
until the partitions are evenly shared, and measures the steady rate over a window. A
sampler thread reads every partition's finished-job counter every few milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings

from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, median, redis_client
from benchmarks.worker import QUEUE, build_broker, progress_key
from brokers import partition_for
from brokers.keys import members_key, partition_keys
from messaging_project.config import BASE_DIR

#: Process counts measured by default.
DEFAULT_PROCESS_COUNTS = (1, 2, 4)

#: Ordering keys the backlog is spread over.
KEYS = 256

#: How often the sampler reads the partitions' counters, in seconds.
SAMPLE_INTERVAL_S = 0.005

#: How long one process runs steadily before the others join, in seconds.
STEADY_BEFORE_JOIN_S = 1.5

#: Time for joined processes to settle before the steady window, in seconds.
SETTLE_S = 0.5

#: How long a process may take to start, join or share the partitions, in seconds.
TIMEOUT_S = 60


@dataclass
class Samples:
    """``(time.monotonic(), {partition: finished jobs})``, read by a sampler thread."""

    rows: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def total_at(self, when: float) -> tuple[float, int]:
        """The last sample at or before ``when``: its time and total."""
        best = self.rows[0]
        for row in self.rows:
            if row[0] > when:
                break
            best = row
        return best[0], sum(best[1].values())

    def max_gap_s(self, partitions: set[int], start: float, end: float) -> float:
        """The longest time any of ``partitions`` made no progress within [start, end]."""
        longest = 0.0
        for p in partitions:
            last_change, last_count = start, None
            for when, counts in self.rows:
                if when < start or when > end:
                    continue
                count = counts.get(p, 0)
                if last_count is not None and count != last_count:
                    longest = max(longest, when - last_change)
                    last_change = when
                last_count = count
            longest = max(longest, end - last_change) if last_count is not None else longest
        return longest


@contextmanager
def _sampling(namespace: str) -> Iterator[Samples]:
    client = redis_client()
    samples = Samples()
    stop = threading.Event()
    key = progress_key(namespace)

    def sample() -> None:
        while not stop.is_set():
            counts = {int(p): int(n) for p, n in client.hgetall(key).items()}
            samples.rows.append((time.monotonic(), counts))
            stop.wait(SAMPLE_INTERVAL_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def _start_worker(namespace: str, threads: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "benchmarks.worker", settings.REDIS_URL, namespace]
    argv += ["--threads", str(threads), "--partitions", str(settings.STREAM_PARTITIONS)]
    return subprocess.Popen(argv, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def _holders(namespace: str) -> dict[int, str]:
    """Partition → the consumer holding its lease."""
    client = redis_client()
    keys = [partition_keys(namespace, QUEUE, p).lease for p in range(settings.STREAM_PARTITIONS)]
    return {p: v.decode() if isinstance(v, bytes) else str(v) for p, v in enumerate(client.mget(keys)) if v}


def _wait_until_even(
    namespace: str, processes: int, workers: list[subprocess.Popen[bytes]]
) -> dict[int, str]:
    partitions = settings.STREAM_PARTITIONS
    fair = {partitions // processes, -(-partitions // processes)}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        holders = _holders(namespace)
        counts = [list(holders.values()).count(c) for c in set(holders.values())]
        if len(counts) == processes and len(holders) == partitions and set(counts) <= fair:
            return holders
        if any(w.poll() is not None for w in workers):
            raise BenchmarkError("a worker process exited")
        time.sleep(0.002)
    raise BenchmarkError(f"{processes} worker processes did not share the partitions within {TIMEOUT_S} s")


def _wait_for_members(namespace: str, count: int) -> float:
    client = redis_client()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if client.zcard(members_key(namespace)) >= count:
            return time.monotonic()
        time.sleep(0.002)
    raise BenchmarkError(f"{count} worker processes did not join within {TIMEOUT_S} s")


def _wait_for_progress(samples: Samples, seconds: float) -> None:
    """Wait until jobs have been finishing for ``seconds``."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        started = next((when for when, counts in samples.rows if sum(counts.values())), None)
        if started is not None and time.monotonic() >= started + seconds:
            return
        time.sleep(0.01)
    raise BenchmarkError(f"no job finished within {TIMEOUT_S} s")


def _fill(namespace: str, messages: int) -> None:
    """Enqueue the backlog (pipelined, a thousand at a time)."""
    broker, actor = build_broker(settings.REDIS_URL, namespace, settings.STREAM_PARTITIONS)
    partitions = settings.STREAM_PARTITIONS
    try:
        for start in range(0, messages, 1000):
            batch = []
            for i in range(start, min(messages, start + 1000)):
                key = f"key-{i % KEYS}"
                batch.append(
                    actor.message_with_options(args=(partition_for(key, partitions),), partition_key=key)
                )
            broker.enqueue_many(batch)
    finally:
        broker.close()


def _round(processes: int, messages: int, threads: int, window_s: float) -> dict[str, float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        _fill(namespace, messages)
        with _sampling(namespace) as samples:
            workers.append(_start_worker(namespace, threads))
            _wait_for_members(namespace, 1)
            before = _wait_until_even(namespace, 1, workers)
            _wait_for_progress(samples, STEADY_BEFORE_JOIN_S)
            row: dict[str, float] = {}
            if processes > 1:
                spawned = time.monotonic()
                workers += [_start_worker(namespace, threads) for _ in range(processes - 1)]
                joined = _wait_for_members(namespace, processes)
                after = _wait_until_even(namespace, processes, workers)
                even = time.monotonic()
                unmoved = {p for p, owner in after.items() if before.get(p) == owner}
                row = {
                    "join_to_even_s": even - joined,
                    "spawn_to_even_s": even - spawned,
                    "partitions_moved": len(after) - len(unmoved),
                }
            time.sleep(SETTLE_S)  # the newcomers' first reads; then the steady window
            t0, n0 = samples.total_at(time.monotonic())
            time.sleep(window_s)
            t1, n1 = samples.total_at(time.monotonic())
            if n1 >= messages:
                raise BenchmarkError(f"the backlog ran out in the window: raise --messages above {messages}")
            row["steady_per_s"] = (n1 - n0) / (t1 - t0)
            if processes > 1:
                # Pauses of the partitions that kept their owner, from the spawn until the
                # settling ended, against their pauses in the same time before the spawn.
                span = even + SETTLE_S - spawned
                row["unmoved_max_gap_s"] = samples.max_gap_s(unmoved, spawned, even + SETTLE_S)
                row["steady_max_gap_s"] = samples.max_gap_s(
                    unmoved, spawned - min(span, STEADY_BEFORE_JOIN_S), spawned
                )
        return row
    finally:
        _stop(workers)
        drop_namespace(namespace)


def run_scaling(
    messages: int,
    rounds: int,
    threads: int,
    window_s: float,
    progress: Progress,
    process_counts: tuple[int, ...] = DEFAULT_PROCESS_COUNTS,
) -> Report:
    """Steady rate per process count against one process; join time and pauses."""
    report = Report("scaling")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "window_s": window_s,
        "keys": KEYS,
        "partitions": settings.STREAM_PARTITIONS,
        "process_counts": list(process_counts),
        "load_average": os.getloadavg(),
        "what": "a backlog of N jobs (one Redis HINCRBY each) over 256 keys; one worker process "
        "(python -m benchmarks.worker, T threads) starts, takes every partition, then the others start at "
        "once; join_to_even_s: from the last one's membership to evenly shared leases; unmoved_max_gap_s: "
        "longest pause of a partition that kept its owner, from the spawn to 0.5 s after; steady rate over "
        "a window afterwards. Process counts alternate within each round; medians",
    }
    results: dict[int, list[dict[str, float]]] = {n: [] for n in process_counts}
    for r in range(rounds):
        for n in process_counts:
            progress(f"scaling round {r + 1}/{rounds}: {n} processes")
            results[n].append(_round(n, messages, threads, window_s))
            report.rounds.append({"processes": n, **results[n][-1]})
    report.figures = {}
    first = process_counts[0]
    for n, rows in results.items():
        report.figures[f"steady_per_s_{n}_processes"] = round(median([row["steady_per_s"] for row in rows]))
        # Ratios within each round (the counts ran back to back), then their median.
        ratios = [
            row["steady_per_s"] / one["steady_per_s"] for row, one in zip(rows, results[first], strict=True)
        ]
        report.figures[f"ratio_{n}_vs_{first}"] = round(median(ratios), 2)
        if n > 1:
            for name in ("join_to_even_s", "spawn_to_even_s", "unmoved_max_gap_s", "steady_max_gap_s"):
                report.figures[f"{name}_{n}_processes"] = round(median([row[name] for row in rows]), 3)
    report.figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    return report
