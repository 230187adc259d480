"""The queue status page: per queue and partition the length, undelivered lag, pending,
oldest age, delayed and retrying entries, dead letters and the lease owner; and the live
worker processes with the partitions they own. Read-only; one pipelined read of Redis
per render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest
from django.template.response import TemplateResponse
from dramatiq.errors import BrokerConnectionError

from brokers import PartitionStats
from delivery.broker import MESSAGES_QUEUE, get_broker


@dataclass(frozen=True, slots=True)
class QueueView:
    """One queue's partitions and their sums."""

    name: str
    partitions: list[PartitionStats]

    def total(self, attribute: str) -> int:
        """The sum of one statistic over the partitions."""
        return sum(int(getattr(p, attribute)) for p in self.partitions)

    @property
    def totals(self) -> dict[str, int]:
        names = ("length", "undelivered", "pending", "delayed", "retrying", "dead_letters")
        return {name: self.total(name) for name in names}

    @property
    def oldest_age_ms(self) -> int:
        return max((p.oldest_age_ms for p in self.partitions), default=0)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A live worker process (its consumer name) and the partitions whose lease it holds."""

    name: str
    partitions: list[str] = field(default_factory=list)
    #: False for a lease holder that stopped renewing its membership (dead, its lease
    #: not expired yet).
    alive: bool = True


def queue_views() -> tuple[list[QueueView], list[WorkerView]]:
    """The queues and the live workers as Redis has them now.

    Raises:
      BrokerConnectionError: Redis is unreachable.
    """
    broker = get_broker()
    by_queue, members = broker.overview(sorted(broker.get_declared_queues() | {MESSAGES_QUEUE}))
    queues = [QueueView(name, partitions) for name, partitions in by_queue.items()]
    owned: dict[str, list[str]] = {name: [] for name in members}
    for queue in queues:
        for stats in queue.partitions:
            if stats.owner:
                # An owner missing from the members has stopped renewing: shown, marked stale.
                owned.setdefault(stats.owner, []).append(f"{queue.name}/{stats.partition}")
    workers = [WorkerView(name, partitions, name in members) for name, partitions in sorted(owned.items())]
    return queues, workers


def render(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """The page, or the same page saying Redis is unreachable (never a 500)."""
    try:
        queues, workers = queue_views()
        error = ""
    except BrokerConnectionError as exc:
        queues, workers, error = [], [], f"Redis is unreachable: {exc}"
    context.update(
        {
            "title": "Queue status",
            "queues": queues,
            "workers": workers,
            "error": error,
        }
    )
    return TemplateResponse(request, "admin/delivery/queue_status.html", context)
