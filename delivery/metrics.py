"""Prometheus metrics of the delivery domain (names and labels as SPEC §8 gives them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from brokers import DeadLetterBacklog, RedisStreamsBroker
from brokers.metrics import DURATION_BUCKETS_MS

#: Ingress answers in milliseconds are small; finer buckets at the low end.
INGRESS_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

IDEMPOTENCY_HIT = Counter(
    "idempotency_hit_total",
    "Repeats recognised, by operation (ingress, persistence, receipt) and source (cache, db).",
    ["operation", "source"],
)
INGRESS_DURATION = Histogram(
    "idempotency_ingress_duration_ms",
    "Time to acknowledge a POST /api/v1/messages, in milliseconds, by outcome.",
    ["status"],
    buckets=INGRESS_BUCKETS_MS,
)
PERSISTENCE_DURATION = Histogram(
    "idempotency_persistence_duration_ms",
    "Time to persist one batch of messages, in milliseconds, by outcome.",
    ["status"],
    buckets=DURATION_BUCKETS_MS,
)


#: The ingress histogram's series by status, looked up once (``labels()`` costs on every
#: message otherwise).
_INGRESS_BY_STATUS: dict[str, object] = {}


def observe_ingress(status: str, elapsed_ms: float) -> None:
    """Record one acknowledged (or refused) message's ingress time."""
    series = _INGRESS_BY_STATUS.get(status)
    if series is None:
        series = _INGRESS_BY_STATUS[status] = INGRESS_DURATION.labels(status)
    series.observe(elapsed_ms)  # type: ignore[attr-defined]


class DeadLetterMirrorCollector(Collector):
    """Reports, at scrape time, the dead letters the database mirror has still to copy.

    The mirror trims what it stored, so every entry left in a dead-letter stream waits
    for it: their number and the age of the oldest are the mirror's lag. A stuck mirror
    (workers' supervisor down, database refusing it) shows as an age that only grows.
    One Redis round trip per queue and scrape.
    """

    def __init__(self, backlog: Callable[[], Iterable[DeadLetterBacklog]]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "delivery_dead_letters_unmirrored",
            "Dead letters in a dead-letter stream, not yet in the DeadLetter table.",
            labels=["queue", "partition"],
        )
        age = GaugeMetricFamily(
            "delivery_dead_letter_mirror_lag_ms",
            "Age of the oldest dead letter not yet in the DeadLetter table, in milliseconds (0: none).",
            labels=["queue", "partition"],
        )
        for backlog in self._backlog():
            labels = [backlog.queue_name, str(backlog.partition)]
            waiting.add_metric(labels, backlog.length)
            age.add_metric(labels, backlog.oldest_age_ms)
        yield waiting
        yield age


def dead_letter_mirror_collector(
    broker: RedisStreamsBroker, queue_names: Callable[[], Iterable[str]]
) -> DeadLetterMirrorCollector:
    """The :class:`DeadLetterMirrorCollector` of ``broker``'s queues (``queue_names()``,
    asked at each scrape)."""
    return DeadLetterMirrorCollector(
        lambda: [b for q in sorted(queue_names()) for b in broker.dead_letter_backlog(q)]
    )
