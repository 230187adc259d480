"""What every scenario shares: its report, its error, and the services it needs."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import dramatiq
import redis
from django.conf import settings
from django.db import connection

#: Shows how far a scenario got (one line; the command writes it to a terminal).
Progress = Callable[[str], None]


class BenchmarkError(Exception):
    """A benchmark cannot run here (a service is missing, a tool is not installed)."""


@dataclass
class Report:
    """Figures and how they were obtained; printed as JSON with ``--json``."""

    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report with the versions of what was measured."""
        versions = {
            "python": sys.version.split()[0],
            "dramatiq": dramatiq.__version__,
            "redis-py": redis.__version__,
            "redis": redis_client().info("server").get("redis_version"),
            "database": connection.vendor,
        }
        return {
            "scenario": self.scenario,
            **self.figures,
            "method": self.method,
            "rounds": self.rounds,
            "versions": versions,
        }


def redis_client() -> redis.Redis:
    """A client of the Redis at ``REDIS_URL``, for the benchmarks' own reads and cleanup."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3)


def check_services() -> None:
    """Fail clearly when Redis or the database does not answer."""
    try:
        redis_client().ping()
    except redis.RedisError as error:
        raise BenchmarkError(f"Redis at {settings.REDIS_URL} is not reachable: {error}") from None
    try:
        connection.ensure_connection()
    except Exception as error:
        raise BenchmarkError(f"The database is not reachable: {error}") from None


def redis_used_memory() -> int:
    """Redis's ``used_memory``, in bytes."""
    return int(cast(dict[str, Any], redis_client().info("memory"))["used_memory"])


def drop_namespace(namespace: str) -> None:
    """Delete every key of a scenario's namespace: the partitions' keys (hash tag
    ``{namespace:N}``) and the namespace's own (``namespace:...``)."""
    client = redis_client()
    for pattern in (f"{{{namespace}:*", f"{namespace}:*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])


def median(values: list[float]) -> float:
    """The median, 0 for no values."""
    return float(statistics.median(values)) if values else 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) by rank, 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
