"""Prometheus metrics of the stream broker (names and labels as SPEC §8 gives them).

Counters and histograms are updated by the broker as it works; partition lag is read
from Redis at scrape time by :class:`PartitionLagCollector`, never per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from brokers.records import PartitionStats

#: Histogram buckets in milliseconds, 10 ms to 5 s (the seed's eight buckets).
DURATION_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 5000)

STREAM_ENQUEUE = Counter(
    "stream_enqueue_total", "Messages added to a partition stream.", ["partition", "priority"]
)
STREAM_DEQUEUE = Counter(
    "stream_dequeue_total", "Messages handed to workers.", ["partition", "consumer_group"]
)
STREAM_PROCESSING_DURATION = Histogram(
    "stream_processing_duration_ms",
    "Time from hand-out to ack of a message or batch, in milliseconds.",
    buckets=DURATION_BUCKETS_MS,
)
STREAM_DEAD_LETTER = Counter(
    "stream_dead_letter_total", "Entries moved to a dead-letter stream.", ["partition", "reason"]
)
STREAM_IDEMPOTENT_HIT = Counter(
    "stream_idempotent_hit_total", "Enqueues answered with an earlier message.", ["partition"]
)
CONSUMER_PROCESSED = Counter(
    "stream_consumer_processed_total",
    "Messages finished by consumers, by outcome (success, retry, dead_lettered).",
    ["partition", "status"],
)
CONSUMER_PROCESSING_DURATION = Histogram(
    "stream_consumer_processing_duration_ms",
    "Time from hand-out to outcome per partition, in milliseconds.",
    ["partition"],
    buckets=DURATION_BUCKETS_MS,
)
CONSUMER_DLQ = Counter(
    "stream_consumer_dlq_total", "Messages a consumer dead-lettered.", ["partition", "reason"]
)

# Per-key order (set by the process that leases the partition; summed over live processes).
PARTITION_BLOCKED_KEYS = Gauge(
    "stream_partition_blocked_keys",
    "Ordering keys of a partition waiting for a retry (their later messages wait with them).",
    ["partition"],
    multiprocess_mode="livesum",
)
PARTITION_LOOKAHEAD = Gauge(
    "stream_partition_lookahead",
    "Entries of a partition held in a worker's memory (waiting or in flight); bounded by the look-ahead.",
    ["partition"],
    multiprocess_mode="livesum",
)
LOOKAHEAD_FULL = Counter(
    "stream_lookahead_full_total",
    "Reads skipped because a partition's look-ahead was full (its keys are blocked or slow).",
    ["partition"],
)


class PartitionMetrics:
    """The labelled series of one partition, looked up once (``labels()`` costs on every
    message otherwise)."""

    def __init__(self, partition: int) -> None:
        label = str(partition)
        self.label = label
        self.succeeded = CONSUMER_PROCESSED.labels(label, "success")
        self.retried = CONSUMER_PROCESSED.labels(label, "retry")
        self.duration = CONSUMER_PROCESSING_DURATION.labels(label)
        # Exported at 0 from the partition's first hand-out: the dashboard's rate() of it has a
        # series before the look-ahead is ever full.
        self.lookahead_full = LOOKAHEAD_FULL.labels(label)
        self._dequeued: dict[str, Any] = {}

    def dequeued(self, queue_name: str) -> Any:
        child = self._dequeued.get(queue_name)
        if child is None:
            child = self._dequeued[queue_name] = STREAM_DEQUEUE.labels(self.label, queue_name)
        return child


_partition_metrics: dict[int, PartitionMetrics] = {}


def partition_metrics(partition: int) -> PartitionMetrics:
    """The cached series of ``partition``."""
    found = _partition_metrics.get(partition)
    if found is None:
        found = _partition_metrics[partition] = PartitionMetrics(partition)
    return found


_enqueued: dict[tuple[int, str], Any] = {}


def enqueued(partition: int, priority: str) -> None:
    """Count one message added to a partition (series looked up once)."""
    series = _enqueued.get((partition, priority))
    if series is None:
        series = _enqueued[(partition, priority)] = STREAM_ENQUEUE.labels(str(partition), priority)
    series.inc()


def dead_lettered(partition: int, reason: str) -> None:
    """Count one dead letter in every metric that counts them."""
    label = str(partition)
    STREAM_DEAD_LETTER.labels(label, reason).inc()
    CONSUMER_DLQ.labels(label, reason).inc()
    CONSUMER_PROCESSED.labels(label, "dead_lettered").inc()


def partition_gauges(partition: int, *, lookahead: int, blocked_keys: int) -> None:
    """Publish what this process holds of a partition it leases."""
    label = str(partition)
    PARTITION_LOOKAHEAD.labels(label).set(lookahead)
    PARTITION_BLOCKED_KEYS.labels(label).set(blocked_keys)


class PartitionLagCollector(Collector):
    """Reports ``stream_partition_lag`` from Redis at scrape time.

    Lag is what is still to do: entries delivered but not acked (``XPENDING``) plus
    entries never delivered (``XINFO GROUPS`` lag), which ``XPENDING`` alone misses.
    The cost is a bounded number of Redis calls per scrape, whatever the traffic.
    """

    def __init__(self, stats: Callable[[], Iterable[PartitionStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "stream_partition_lag",
            "Entries not yet processed per partition: pending plus undelivered.",
            labels=["partition", "consumer_group"],
        )
        undelivered = GaugeMetricFamily(
            "stream_partition_undelivered",
            "Entries never delivered to the group (XINFO GROUPS lag).",
            labels=["partition", "consumer_group"],
        )
        oldest = GaugeMetricFamily(
            "stream_partition_oldest_pending_age_ms",
            "Age of the oldest entry still in the partition stream, in milliseconds.",
            labels=["partition", "consumer_group"],
        )
        dead = GaugeMetricFamily(
            "stream_dead_letters", "Entries waiting in a dead-letter stream.", labels=["partition", "queue"]
        )
        for stat in self._stats():
            labels = [str(stat.partition), stat.queue_name]
            lag.add_metric(labels, stat.pending + stat.undelivered)
            undelivered.add_metric(labels, stat.undelivered)
            oldest.add_metric(labels, stat.oldest_age_ms)
            dead.add_metric(labels, stat.dead_letters)
        yield lag
        yield undelivered
        yield oldest
        yield dead
