"""``manage.py runworkers``: Dramatiq worker processes on the stream broker, supervised.

The parent process waits for Redis and the database, starts ``--processes`` children
(each one Dramatiq ``Worker`` with ``--threads`` threads), restarts a child that dies,
mirrors dead letters into the database, and serves every child's metrics on
``METRICS_BIND_ADDRESS``:``METRICS_PORT`` (prometheus_client multiprocess mode; a port that
is taken stops start-up with a one-line error). SIGTERM or SIGINT: each child
finishes the message in hand, acks it, releases its partition leases and exits; the
parent exits 0 once they are gone, within ``--worker-shutdown-timeout`` of the signal
whatever happens (children still busy then, say waiting on an unreachable Redis, are
killed; their messages stay pending for the next owner).
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
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from dramatiq.errors import BrokerConnectionError

from messaging_project import launch
from messaging_project.postgresql.base import bound_answers

logger = logging.getLogger("delivery.runworkers")

#: Dramatiq's default worker threads per process.
DEFAULT_THREADS = 8

#: Dramatiq's default time to let workers finish on shutdown, in milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT_MS = 600_000

#: How often dead letters are mirrored into the database, in seconds.
MIRROR_INTERVAL_S = 2.0

#: How often the mirror thread also deletes dead-letter rows past DEAD_LETTER_RETENTION_DAYS.
PURGE_INTERVAL_S = 3600.0

#: Pause before restarting a child that died, the first time, in seconds.
FIRST_RESTART_BACKOFF_S = 0.5

#: Longest pause between restarts of a child that keeps dying, in seconds.
MAX_RESTART_BACKOFF_S = 30.0

#: A child that ran this long before dying was healthy: its next restart is quick again.
HEALTHY_AFTER_S = 60.0

#: Longest pause between two start-up checks of Redis and the database, in seconds.
MAX_WAIT_BACKOFF_S = 10.0

#: Part of ``--worker-shutdown-timeout`` a child keeps, after its messages in hand are
#: done, to write acks and release leases before the parent's deadline, in milliseconds.
SHUTDOWN_CLEANUP_MS = 1000


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
        # Workers pause, not hang, when the database stops answering (a partition).
        bound_answers()
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


class RestartBackoff:
    """How long to wait before restarting a worker process that died.

    A child that dies soon after it started (a crash on start, a poison the next run meets
    again) waits twice as long each time, up to :data:`MAX_RESTART_BACKOFF_S`, so a crash
    loop does not spin. A child that ran :data:`HEALTHY_AFTER_S` or longer before it died
    starts over from :data:`FIRST_RESTART_BACKOFF_S`: one crash a day is not a crash loop.
    """

    def __init__(
        self,
        *,
        first_s: float = FIRST_RESTART_BACKOFF_S,
        max_s: float = MAX_RESTART_BACKOFF_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.healthy_after_s = healthy_after_s
        self._next: dict[int, float] = {}

    def delay_s(self, child_id: int, ran_s: float) -> float:
        """The pause before restarting ``child_id``, which ran ``ran_s`` seconds and died."""
        if ran_s >= self.healthy_after_s:
            self._next.pop(child_id, None)
        delay = self._next.get(child_id, self.first_s)
        self._next[child_id] = min(delay * 2, self.max_s)
        return delay


class Supervisor:
    """Starts, restarts and stops the worker processes; serves their metrics."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.stop = threading.Event()
        #: When SIGTERM or SIGINT came (monotonic seconds): the shutdown deadline counts from it.
        self.stop_requested_at: float | None = None
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        #: When each child was started (monotonic seconds).
        self.started_at: dict[int, float] = {}
        self.restarts: dict[int, int] = {}
        self.backoff = RestartBackoff()
        self.metrics_dir: Path | None = None
        self.restart_counter: Any = None

    def request_stop(self, *_: Any) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.stop.set()

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        # The metrics port first: a port that is taken stops start-up at once, in one line.
        if settings.ENABLE_PROMETHEUS_METRICS:
            self.serve_metrics()
        if not wait_for_services(self.stop):
            self.remove_metrics_dir()
            return
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
        self.started_at[child_id] = time.monotonic()

    def supervise(self) -> None:
        while not self.stop.wait(0.5):
            for child_id, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                self.restarts[child_id] = self.restarts.get(child_id, 0) + 1
                if self.restart_counter is not None:
                    self.restart_counter.inc()
                delay = self.backoff.delay_s(child_id, time.monotonic() - self.started_at[child_id])
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
                self.spawn(child_id)

    def shutdown(self) -> None:
        logger.info("Stopping %d worker process(es)...", len(self.children))
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        started = self.stop_requested_at or time.monotonic()
        deadline = started + self.options["worker_shutdown_timeout"] / 1000
        for child_id, child in self.children.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("Worker process %d did not stop in time; killing it.", child_id)
                child.kill()
                child.wait()
        self.remove_metrics_dir()
        logger.info("Workers stopped.")

    def remove_metrics_dir(self) -> None:
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def mirror_dead_letters(self) -> None:
        from delivery import services

        next_purge = time.monotonic()
        while not self.stop.wait(MIRROR_INTERVAL_S):
            try:
                created = services.dead_letters_mirror()
                if created:
                    logger.warning("Mirrored %d new dead letter(s) into the database.", created)
                if settings.DEAD_LETTER_RETENTION_DAYS and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_INTERVAL_S
                    purged = services.dead_letters_purge(
                        older_than=timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
                    )
                    if purged:
                        logger.info("Deleted %d requeued or discarded dead letter(s) past retention.", purged)
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

        from delivery.broker import MESSAGES_QUEUE, get_broker
        from delivery.metrics import dead_letter_mirror_collector

        self.metrics_dir = Path(tempfile.mkdtemp(prefix="delivery-metrics-"))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))
        ProcessCollector(registry=registry)
        registry.register(get_broker().lag_collector())
        registry.register(
            dead_letter_mirror_collector(
                get_broker(), lambda: get_broker().get_declared_queues() | {MESSAGES_QUEUE}
            )
        )
        self.restart_counter = Counter(
            "stream_worker_restarts_total", "Worker processes restarted after dying.", registry=registry
        )
        port, address = int(settings.METRICS_PORT), settings.METRICS_BIND_ADDRESS
        if port:
            try:
                start_http_server(port, addr=address, registry=registry)
            except OSError as error:
                self.remove_metrics_dir()
                raise CommandError(
                    f"Cannot serve worker metrics on {address} port {port} (METRICS_PORT, "
                    f"METRICS_BIND_ADDRESS): {error.strerror or error}. Choose a free port, or "
                    "METRICS_PORT=0 for no metrics endpoint."
                ) from None
            logger.info("Worker metrics on %s port %d (/metrics)", address, port)


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
    worker = Worker(
        broker, queues=queues, worker_threads=options["threads"], worker_timeout=settings.WORKER_TIMEOUT_MS
    )
    worker.start()
    logger.info("Worker process %d (pid %d) is ready.", options["child"], os.getpid())
    stop.wait()
    logger.info("Worker process %d stopping: finishing messages in hand.", options["child"])
    timeout_ms = options["worker_shutdown_timeout"]
    worker.stop(timeout=max(timeout_ms // 2, timeout_ms - SHUTDOWN_CLEANUP_MS))
    broker.close()
    connection.close()
    logger.info("Worker process %d stopped.", options["child"])
