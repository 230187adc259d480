"""Scenario ``keys``: what per-key order costs. Consume rate with 1, 16, 256 and 4,096
ordering keys: ours ordered per key (the default) against ours unordered (no
``partition_key``: every message is its own key) and against stock Dramatiq's RedisBroker,
alternating within each round (issue 13)."""

from __future__ import annotations

import os
import uuid

import dramatiq
from django.conf import settings
from dramatiq.brokers.redis import RedisBroker

from benchmarks.jobs import SYSTEMS, consume_round, key_names
from benchmarks.report import Progress, Report, drop_namespace, median
from brokers import RedisStreamsBroker

#: Key counts measured by default.
DEFAULT_KEY_COUNTS = (1, 16, 256, 4096)


def run_keys(
    messages: int,
    rounds: int,
    threads: int,
    progress: Progress,
    key_counts: tuple[int, ...] = DEFAULT_KEY_COUNTS,
    job: str = "incr",
) -> Report:
    """Consume rates per key count and system, and the ordered/unordered and
    ordered/stock ratios."""
    partitions = settings.STREAM_PARTITIONS
    report = Report("keys")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "key_counts": list(key_counts),
        "job": job,
        "partitions": partitions,
        "load_average": os.getloadavg(),
        "what": "T producer threads enqueue N jobs round-robin over K keys, then a Dramatiq Worker with T "
        "threads runs them; the job is one Redis INCR (--job noop: nothing). Systems: ours ordered per "
        "key (partition_key=key), ours unordered (no partition_key), stock dramatiq RedisBroker (default "
        "prefetch). Each round runs every key count and system in turn; consume rate counts from the first "
        "finished job; medians",
    }
    results: dict[tuple[int, str], list[float]] = {}
    for r in range(rounds):
        for count in key_counts:
            keys = key_names(count)
            for name, kind, ordered in SYSTEMS:
                progress(f"keys round {r + 1}/{rounds}: {count} keys, {name}")
                namespace = f"bench-{uuid.uuid4().hex[:8]}"
                broker: dramatiq.Broker
                url = settings.REDIS_URL
                if kind == "ours":
                    broker = RedisStreamsBroker(url, namespace=namespace, partitions=partitions)
                else:
                    broker = RedisBroker(url=url, namespace=namespace)
                try:
                    figures, _ = consume_round(
                        broker,
                        messages=messages,
                        keys=keys,
                        threads=threads,
                        ordered=ordered,
                        counter=f"{namespace}:done",
                        redis_call=job == "incr",
                    )
                finally:
                    drop_namespace(namespace)
                results.setdefault((count, name), []).append(figures["consume_per_s"])
                report.rounds.append({"keys": count, "system": name, **figures})
    report.figures = {}
    for count in key_counts:
        rates = {name: results[(count, name)] for name, _, _ in SYSTEMS}
        report.figures.update({f"{name}_per_s_{count}_keys": round(median(r)) for name, r in rates.items()})
        # Ratios within each round (the systems ran back to back), then their median: steadier
        # than a ratio of medians on a loaded machine.
        for other in ("unordered", "stock"):
            ratios = [o / b for o, b in zip(rates["ordered"], rates[other], strict=True)]
            report.figures[f"ordered_vs_{other}_{count}_keys"] = round(median(ratios), 2)
    report.figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    return report
