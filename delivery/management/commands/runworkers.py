"""``manage.py runworkers``: Dramatiq worker processes on the stream broker, supervised.

The parent process waits for Redis and the database, starts ``--processes`` children
(each one Dramatiq ``Worker`` with ``--threads`` threads), restarts a child that dies,
mirrors dead letters into the database, and serves every child's metrics on
``METRICS_PORT`` (prometheus_client multiprocess mode). SIGTERM or SIGINT: each child
finishes the message in hand, acks it, releases its partition leases and exits; the
parent exits 0 once they are gone (children still busy after
``--worker-shutdown-timeout`` are killed; their messages stay pending for the next owner).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from dramatiq.errors import BrokerConnectionError

from messaging_project import launch

logger = logging.getLogger("delivery.runworkers")

#: Dramatiq's default worker threads per process.
DEFAULT_THREADS = 8

#: Dramatiq's default time to let workers finish on shutdown, in milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT_MS = 600_000

#: How often dead letters are mirrored into the database, in seconds.
MIRROR_INTERVAL_S = 2.0

#: Longest pause between restarts of a child that keeps dying, in seconds.
MAX_RESTART_BACKOFF_S = 30.0

#: Longest pause between two start-up checks of Redis and the database, in seconds.
MAX_WAIT_BACKOFF_S = 10.0


class Command(BaseCommand):
    help = "Run Dramatiq workers on the Redis Streams broker for the project's actors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--processes", "-p", type=int, default=os.cpu_count() or 1, help="worker processes"
        )
        parser.add_argument(
            "--threads", "-t", type=int, default=DEFAULT_THREADS, help="worker threads per process"
        )
        parser.add_argument(
            "--queues", "-Q", nargs="*", default=None, help="only these queues (default: all)"
        )
        parser.add_argument(
            "--worker-shutdown-timeout",
            type=int,
            default=DEFAULT_SHUTDOWN_TIMEOUT_MS,
            help="milliseconds to let workers finish on shutdown",
        )
        parser.add_argument("--verbose", action="count", default=0, help="log more (repeat for even more)")
        parser.add_argument("--child", type=int, default=None, help="(internal) run as worker process N")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verbose"]:
            logging.getLogger().setLevel(logging.DEBUG)
            logging.getLogger("dramatiq").setLevel(logging.DEBUG)
        if options["processes"] < 1 or options["threads"] < 1:
            raise CommandError("--processes and --threads must be at least 1")
        if options["child"] is not None:
            run_child(options)
            return
        if not settings.ENABLE_STREAM_CONSUMERS:
            logger.warning("ENABLE_STREAM_CONSUMERS is off: no workers started.")
            return
        Supervisor(options).run()


def wait_for_services(stop: threading.Event) -> bool:
    """Wait (with backoff, saying what for) until Redis and the database answer."""
    from delivery.broker import get_broker

    delay = 0.5
    while not stop.is_set():
        problems = []
        try:
            get_broker().ping()
        except BrokerConnectionError as error:
            problems.append(f"Redis at {settings.REDIS_URL} ({error})")
        try:
            connection.ensure_connection()
        except Exception as error:
            problems.append(f"the database ({error})")
            connection.close()
        if not problems:
            return True
        logger.warning("Waiting for %s; retrying in %.1fs.", " and ".join(problems), delay)
        stop.wait(delay)
        delay = min(delay * 2, MAX_WAIT_BACKOFF_S)
    return False


class Supervisor:
    """Starts, restarts and stops the worker processes; serves their metrics."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.stop = threading.Event()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.metrics_dir: Path | None = None
        self.restart_counter: Any = None

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        if not wait_for_services(self.stop):
            return
        if settings.ENABLE_PROMETHEUS_METRICS:
            self.serve_metrics()
        for child_id in range(self.options["processes"]):
            self.spawn(child_id)
        mirror = threading.Thread(target=self.mirror_dead_letters, name="dead-letter-mirror", daemon=True)
        mirror.start()
        logger.info(
            "Started %d worker process(es) with %d thread(s) each.",
            self.options["processes"],
            self.options["threads"],
        )
        self.supervise()
        self.shutdown()

    def spawn(self, child_id: int) -> None:
        argv = launch.manage_argv(
            "runworkers",
            "--child",
            str(child_id),
            "--threads",
            str(self.options["threads"]),
            "--worker-shutdown-timeout",
            str(self.options["worker_shutdown_timeout"]),
        )
        if self.options["queues"]:
            argv += ["--queues", *self.options["queues"]]
        argv += ["--verbose"] * self.options["verbose"]
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.children[child_id] = subprocess.Popen(argv, env=env)

    def supervise(self) -> None:
        backoff: dict[int, float] = {}
        while not self.stop.wait(0.5):
            for child_id, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                self.restarts[child_id] = self.restarts.get(child_id, 0) + 1
                if self.restart_counter is not None:
                    self.restart_counter.inc()
                delay = backoff.get(child_id, 0.5)
                logger.error(
                    "Worker process %d (pid %d) exited with code %s; restarting it in %.1fs (restart #%d).",
                    child_id,
                    child.pid,
                    code,
                    delay,
                    self.restarts[child_id],
                )
                if self.metrics_dir is not None:
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(child.pid, str(self.metrics_dir))
                if self.stop.wait(delay):
                    return
                backoff[child_id] = min(delay * 2, MAX_RESTART_BACKOFF_S)
                self.spawn(child_id)

    def shutdown(self) -> None:
        logger.info("Stopping %d worker process(es)...", len(self.children))
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options["worker_shutdown_timeout"] / 1000 + 10
        for child_id, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("Worker process %d did not stop in time; killing it.", child_id)
                child.kill()
                child.wait()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        logger.info("Workers stopped.")

    def mirror_dead_letters(self) -> None:
        from delivery import services

        while not self.stop.wait(MIRROR_INTERVAL_S):
            try:
                created = services.dead_letters_mirror()
                if created:
                    logger.warning("Mirrored %d new dead letter(s) into the database.", created)
            except Exception as error:
                logger.warning("Dead-letter mirror failed (will retry): %s", error)
                connection.close()

    def serve_metrics(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            ProcessCollector,
            multiprocess,
            start_http_server,
        )

        from delivery.broker import get_broker

        self.metrics_dir = Path(tempfile.mkdtemp(prefix="delivery-metrics-"))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        ProcessCollector(registry=registry)
        registry.register(get_broker().lag_collector())
        self.restart_counter = Counter(
            "stream_worker_restarts_total", "Worker processes restarted after dying.", registry=registry
        )
        port = int(settings.METRICS_PORT)
        if port:
            start_http_server(port, addr="0.0.0.0", registry=registry)
            logger.info("Worker metrics on :%d/metrics", port)


def run_child(options: dict[str, Any]) -> None:
    """One worker process: a Dramatiq Worker on the project's broker."""
    from dramatiq import Worker

    from delivery.broker import get_broker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    broker = get_broker()
    broker.emit_after("process_boot")
    queues = set(options["queues"]) if options["queues"] else None
    worker = Worker(broker, queues=queues, worker_threads=options["threads"])
    worker.start()
    logger.info("Worker process %d (pid %d) is ready.", options["child"], os.getpid())
    stop.wait()
    logger.info("Worker process %d stopping: finishing messages in hand.", options["child"])
    worker.stop(timeout=options["worker_shutdown_timeout"])
    broker.close()
    connection.close()
    logger.info("Worker process %d stopped.", options["child"])
