"""The ``peers`` scenario's job queues, each with the same job: one Redis call,
``INCR <namespace>:done``. One module per system (no Django); each builds its app from
arguments (the scenario's enqueuing side) and, for the worker command, from the
environment: ``BENCH_REDIS_URL``, ``BENCH_NAMESPACE``, ``BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import os

#: The job's name in every system.
JOB_NAME = "bench_peer_job"


def done_key(namespace: str) -> str:
    """The counter every finished job increments."""
    return f"{namespace}:done"


def from_environment() -> tuple[str, str, str]:
    """(Redis URL, namespace, database URL) for a worker command."""
    return (
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        os.environ.get("BENCH_NAMESPACE", "bench"),
        os.environ.get("BENCH_DATABASE_URL", ""),
    )
