"""Prometheus metrics of the delivery domain (names and labels as SPEC §8 gives them)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
