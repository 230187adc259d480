"""Gunicorn settings (``--config python:messaging_project.gunicorn``).

Each gunicorn worker is a process: prometheus_client's multiprocess mode lets any of
them answer ``/metrics`` for all. The directory is set before prometheus_client is
imported anywhere, and emptied at start so counters do not carry over a restart.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="delivery-api-metrics-")

#: Sync workers: keep-alive connections do not pile onto one worker (see docs/benchmarks.md).
worker_class = "sync"

#: No control socket (gunicorn >= 25.1): its default is one path per user
#: (``~/.gunicorn/gunicorn.ctl``) that two instances on one machine fight over, and nothing
#: here uses ``gunicornc``; the service is stopped and resized by signals.
control_socket_disable = True

#: Gunicorn's own logs as one JSON object per line, like the application's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "delivery.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    },
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    from messaging_project.config import ConfigError, load_config

    try:  # a bad environment stops the server here, in one line, not in every worker's traceback
        load_config()
    except ConfigError as error:
        server.log.error("Bad configuration: %s", error)
        sys.exit(1)
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    from messaging_project.postgresql.base import bound_answers

    # Requests are answered within seconds even when the database is not (a partition).
    bound_answers()
    # The loaded application's objects live as long as the worker: moving them out of the
    # collector's generations keeps full collections (latency spikes) short.
    gc.freeze()
