"""Scenario ``hol`` (head of line): one key's message fails for a few seconds (retried in
place with backoff); how long do the keys sharing its partition take to finish, against
keys of other partitions? Ours (order per key) beside ``ordering="partition"`` (what a
partition-ordered consumer does), alternating (issue 13)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count

from django.conf import settings

from benchmarks.jobs import consume_round
from benchmarks.report import Progress, Report, drop_namespace, median
from brokers import RedisStreamsBroker, partition_for

#: The key whose first message fails.
FAILING_KEY = "key-failing"

#: Keys sharing the failing key's partition, and keys of other partitions.
SAME_PARTITION_KEYS = 8
OTHER_PARTITION_KEYS = 24

#: Retry backoff of the failing message, in milliseconds (Dramatiq's options).
MIN_BACKOFF_MS = 100
MAX_BACKOFF_MS = 500


class InjectedFailure(Exception):
    """The failing key's message fails on purpose."""


@contextmanager
def _quiet_dramatiq() -> Iterator[None]:
    """The injected failures would print a traceback per retry."""
    logger = logging.getLogger("dramatiq")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _keys(partitions: int) -> tuple[list[str], list[str]]:
    """Keys sharing the failing key's partition, and keys of other partitions."""
    home = partition_for(FAILING_KEY, partitions)
    same: list[str] = []
    other: list[str] = []
    for i in count():
        key = f"key-{i}"
        group = same if partition_for(key, partitions) == home else other
        wanted = SAME_PARTITION_KEYS if group is same else OTHER_PARTITION_KEYS
        if len(group) < wanted:
            group.append(key)
        if len(same) == SAME_PARTITION_KEYS and len(other) == OTHER_PARTITION_KEYS:
            return same, other
    raise AssertionError("unreachable")


def _round(ordering: str, per_key: int, fail_s: float, threads: int) -> dict[str, float]:
    partitions = settings.STREAM_PARTITIONS
    same, other = _keys(partitions)
    keys = [FAILING_KEY, *same, *other]
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    fail_until: list[float] = []

    def fail_first(key: str, i: int) -> None:
        if key != FAILING_KEY:
            return
        if not fail_until:
            fail_until.append(time.monotonic() + fail_s)
        if time.monotonic() < fail_until[0]:
            raise InjectedFailure(f"{key} message {i} fails for {fail_s} s")

    broker = RedisStreamsBroker(
        settings.REDIS_URL,
        namespace=namespace,
        partitions=partitions,
        ordering="key" if ordering == "key" else "partition",
    )
    try:
        with _quiet_dramatiq():
            _, finishes = consume_round(
                broker,
                messages=per_key * len(keys),
                keys=keys,
                threads=threads,
                ordered=True,
                counter=f"{namespace}:done",
                actor_options={
                    "max_retries": 10_000,
                    "min_backoff": MIN_BACKOFF_MS,
                    "max_backoff": MAX_BACKOFF_MS,
                },
                body=fail_first,
            )
    finally:
        drop_namespace(namespace)
    start, _ = finishes.first_and_last()
    done = {key: max(times) - start for key, times in finishes.by_key.items()}
    same_s, other_s = [done[k] for k in same], [done[k] for k in other]
    return {
        "failing_key_s": done[FAILING_KEY],
        "same_partition_max_s": max(same_s),
        "same_partition_median_s": median(same_s),
        "other_partitions_max_s": max(other_s),
        "other_partitions_median_s": median(other_s),
        "delay_s": max(same_s) - max(other_s),
    }


def run_hol(per_key: int, rounds: int, threads: int, fail_s: float, progress: Progress) -> Report:
    """Seconds until the keys of the failing key's partition and the other keys finish."""
    report = Report("hol")
    report.method = {
        "messages_per_key": per_key,
        "rounds": rounds,
        "threads": threads,
        "fail_s": fail_s,
        "keys": {
            "failing": 1,
            "same_partition": SAME_PARTITION_KEYS,
            "other_partitions": OTHER_PARTITION_KEYS,
        },
        "partitions": settings.STREAM_PARTITIONS,
        "load_average": os.getloadavg(),
        "what": f"{per_key} jobs per key enqueued round-robin, then a Worker runs them; the failing key's "
        f"message raises for {fail_s} s (retried in place, backoff {MIN_BACKOFF_MS}-{MAX_BACKOFF_MS} ms). "
        "Times from the first finished job until each key's last job finished; delay_s = slowest key sharing "
        "the failing key's partition minus slowest key elsewhere. Ours (ordering='key') alternates with "
        "ordering='partition'; medians",
    }
    results: dict[str, list[dict[str, float]]] = {"key": [], "partition": []}
    for r in range(rounds):
        for ordering, rows in results.items():
            progress(f"hol round {r + 1}/{rounds}: ordering={ordering}")
            rows.append(_round(ordering, per_key, fail_s, threads))
            report.rounds.append({"ordering": ordering, **rows[-1]})
    report.figures = {}
    for ordering, rows in results.items():
        prefix = "" if ordering == "key" else "partition_order_"
        for name in rows[0]:
            report.figures[f"{prefix}{name}"] = round(median([row[name] for row in rows]), 3)
    report.figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    return report
