"""Scenario ``takeover``: how long the partitions of a SIGKILLed worker process take to
move to the surviving one."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

from django.conf import settings

from benchmarks.fixtures import bench_conversations, persist_message
from benchmarks.processes import bench_env, run_workers, wait_for_balanced_leases
from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, median
from brokers import RedisStreamsBroker, partition_for
from delivery.models import Message

#: Pause between two messages of the steady trickle, in seconds.
TRICKLE_INTERVAL_S = 0.002


def run_takeover(rounds: int, progress: Progress) -> Report:
    """Seconds from the SIGKILL until every partition it leased persisted a new message."""
    report = Report("takeover")
    report.method = {
        "rounds": rounds,
        "what": "runworkers with 2 processes on a steady trickle of messages to every partition; SIGKILL one "
        "worker process; time until every partition it leased has persisted a new message",
    }
    partitions = settings.STREAM_PARTITIONS
    results: list[float] = []
    with bench_conversations() as (sender, conversations):
        by_partition: dict[int, list[str]] = {}
        for c in conversations:
            by_partition.setdefault(partition_for(c, partitions), []).append(c)
        for r in range(rounds):
            progress(f"takeover round {r + 1}/{rounds}")
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            env = bench_env(STREAM_NAMESPACE=namespace)
            producer = RedisStreamsBroker(settings.REDIS_URL, namespace=namespace, partitions=partitions)
            stop = threading.Event()

            def trickle(target: RedisStreamsBroker = producer, halt: threading.Event = stop) -> None:
                i = 0
                while not halt.is_set():
                    target.enqueue(persist_message(sender, conversations[i % len(conversations)]))
                    i += 1
                    halt.wait(TRICKLE_INTERVAL_S)

            feeder = threading.Thread(target=trickle, daemon=True)
            feeder.start()
            try:
                with run_workers(env, processes=2, threads=4) as workers:
                    holders = wait_for_balanced_leases(workers, namespace)
                    victim = min(holders)
                    killed_at = time.time()
                    os.kill(victim, signal.SIGKILL)
                    takeover = _wait_for_progress(holders[victim], by_partition, killed_at)
                    results.append(takeover)
                    report.rounds.append({"takeover_s": takeover, "partitions_moved": len(holders[victim])})
            finally:
                stop.set()
                feeder.join()
                drop_namespace(namespace)
                Message.objects.filter(conversation_id__in=conversations).delete()
    report.figures = {"takeover_s": round(median(results), 2), "takeover_max_s": round(max(results), 2)}
    return report


def _wait_for_progress(partitions: set[int], by_partition: dict[int, list[str]], killed_at: float) -> float:
    """Seconds from ``killed_at`` until each of ``partitions`` persisted a message."""
    since = datetime.fromtimestamp(killed_at, UTC)
    deadline = time.monotonic() + 120
    resumed: dict[int, float] = {}
    while time.monotonic() < deadline:
        for p in partitions - set(resumed):
            first = (
                Message.objects.filter(conversation_id__in=by_partition.get(p, []), persisted_at__gt=since)
                .order_by("persisted_at")
                .values_list("persisted_at", flat=True)
                .first()
            )
            if first is not None:
                resumed[p] = first.timestamp() - killed_at
        if len(resumed) == len(partitions):
            return max(resumed.values())
        time.sleep(0.05)
    raise BenchmarkError("the killed worker's partitions did not move within 2 minutes")
