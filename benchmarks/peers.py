"""Scenario ``peers``: ours beside other Python job queues, the same job (one Redis call),
the same N and keys, the same concurrency (issue 20).

Every system runs on a private ``redis-server`` started for the scenario (so its CPU is
ours alone to count); Procrastinate on a database of its own (``<database>_peers``,
schema applied fresh). Per round and system: enqueue N jobs from this process (T threads
or T concurrent coroutines), then start the system's worker as a subprocess and time
from its first finished job to its last. CPU per job counts every process involved: the
enqueuing process (this one), the worker and its children, redis-server and, for
Procrastinate, the PostgreSQL backends of its database. A system whose package is not
installed (``pip install -e '.[bench]'``) is listed as missing, not measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from django.db import connection

from benchmarks.peer_apps import done_key
from benchmarks.processes import child_pids, cpu_of, cpu_of_tree, cpu_self, free_port
from benchmarks.report import BenchmarkError, Progress, Report, median
from messaging_project.config import BASE_DIR

#: Ordering keys the jobs are spread over.
KEYS = 256

#: How long one system may take to finish a round, in seconds.
ROUND_TIMEOUT_S = 300


@dataclass(frozen=True)
class Setup:
    """Where a round runs."""

    redis_url: str
    namespace: str
    database_url: str
    threads: int

    def env(self) -> dict[str, str]:
        """The worker command's environment."""
        return {
            **os.environ,
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_NAMESPACE": self.namespace,
            "BENCH_DATABASE_URL": self.database_url,
        }


def _threads(setup: Setup, keys: list[str], send: Callable[[str], None]) -> None:
    def produce(offset: int) -> None:
        for i in range(offset, len(keys), setup.threads):
            send(keys[i])

    producers = [threading.Thread(target=produce, args=(t,)) for t in range(setup.threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()


async def _coroutines(setup: Setup, keys: list[str], send: Callable[[str], Any]) -> None:
    async def produce(offset: int) -> None:
        for i in range(offset, len(keys), setup.threads):
            await send(keys[i])

    await asyncio.gather(*(produce(t) for t in range(setup.threads)))


def _enqueue_dramatiq(kind: str) -> Callable[[Setup, list[str]], None]:
    def enqueue(setup: Setup, keys: list[str]) -> None:
        from benchmarks.peer_apps import dramatiq_app

        broker, actor = dramatiq_app.build(kind, setup.redis_url, setup.namespace)
        try:
            _threads(setup, keys, lambda key: dramatiq_app.send(actor, key))
        finally:
            broker.close()

    return enqueue


def _enqueue_celery(setup: Setup, keys: list[str]) -> None:
    from benchmarks.peer_apps import celery_app

    app, job = celery_app.build(setup.redis_url, setup.namespace)
    try:
        _threads(setup, keys, lambda key: job.apply_async(args=(key,)))
    finally:
        app.close()


def _enqueue_taskiq(setup: Setup, keys: list[str]) -> None:
    from benchmarks.peer_apps import taskiq_app

    async def run() -> None:
        broker, job = taskiq_app.build(setup.redis_url, setup.namespace)
        await broker.startup()
        try:
            await _coroutines(setup, keys, job.kiq)
        finally:
            await broker.shutdown()

    asyncio.run(run())


def _enqueue_procrastinate(lock: bool) -> Callable[[Setup, list[str]], None]:
    def enqueue(setup: Setup, keys: list[str]) -> None:
        from benchmarks.peer_apps import procrastinate_app

        async def run() -> None:
            app, job = procrastinate_app.build(setup.redis_url, setup.namespace, setup.database_url)
            async with app.open_async():
                if lock:
                    await _coroutines(
                        setup, keys, lambda key: job.configure(lock=key).defer_async(ordering_key=key)
                    )
                else:
                    await _coroutines(setup, keys, lambda key: job.defer_async(ordering_key=key))

        asyncio.run(run())
        # Autovacuum is off on these servers: without fresh statistics the planner scans
        # the whole jobs table for every fetch.
        with psycopg.connect(setup.database_url, autocommit=True) as conn:
            conn.execute("ANALYZE procrastinate_jobs")

    return enqueue


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass(frozen=True)
class Peer:
    """One system: the package it needs, its app module (imported before the timing
    starts), how to enqueue, how to start its worker."""

    name: str
    package: str
    app: str
    enqueue: Callable[[Setup, list[str]], None]
    worker_argv: Callable[[Setup], list[str]]
    postgres: bool = False


def _procrastinate_worker(s: Setup) -> list[str]:
    return [
        _bin("procrastinate"),
        "--app",
        "benchmarks.peer_apps.procrastinate_app.app",
        "worker",
        "--concurrency",
        str(s.threads),
    ]


PEERS = (
    Peer(
        "ours",
        "dramatiq",
        "dramatiq_app",
        _enqueue_dramatiq("ours"),
        lambda s: [
            sys.executable,
            "-m",
            "benchmarks.peer_apps.dramatiq_app",
            "ours",
            "--threads",
            str(s.threads),
        ],
    ),
    Peer(
        "dramatiq",
        "dramatiq",
        "dramatiq_app",
        _enqueue_dramatiq("stock"),
        lambda s: [
            sys.executable,
            "-m",
            "benchmarks.peer_apps.dramatiq_app",
            "stock",
            "--threads",
            str(s.threads),
        ],
    ),
    Peer(
        "taskiq",
        "taskiq_redis",
        "taskiq_app",
        _enqueue_taskiq,
        lambda s: [
            _bin("taskiq"),
            "worker",
            "benchmarks.peer_apps.taskiq_app:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(s.threads),
            "--log-level",
            "WARNING",
        ],
    ),
    Peer(
        "celery",
        "celery",
        "celery_app",
        _enqueue_celery,
        lambda s: [
            _bin("celery"),
            "-A",
            "benchmarks.peer_apps.celery_app",
            "worker",
            "-P",
            "threads",
            "-c",
            str(s.threads),
            "-Q",
            s.namespace,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ],
    ),
    *(
        Peer(
            name,
            "procrastinate",
            "procrastinate_app",
            _enqueue_procrastinate(lock=lock),
            _procrastinate_worker,
            postgres=True,
        )
        for name, lock in (("procrastinate", False), ("procrastinate_lock", True))
    ),
)


@contextmanager
def private_redis() -> Iterator[tuple[str, int]]:
    """A redis-server of this scenario alone (no persistence): its URL and pid."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        server = subprocess.Popen([*argv, "--dir", workdir], stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BenchmarkError("redis-server is not installed (apt-get install redis-server)") from None
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise BenchmarkError("the private redis-server did not start") from None
                time.sleep(0.05)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _peers_database() -> str:
    """A database for Procrastinate beside the project's, its schema applied fresh."""
    from procrastinate.schema import SchemaManager

    db = connection.settings_dict
    name = f"{db['NAME']}_peers"
    base = f"host={db['HOST']} port={db['PORT']} user={db['USER']}"
    if db.get("PASSWORD"):
        base += f" password={db['PASSWORD']}"
    with psycopg.connect(f"{base} dbname={db['NAME']}", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')  # nosec B608 - our own database name
    dsn = f"{base} dbname={name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        conn.execute(SchemaManager.get_schema())
    return dsn


def _pg_cpu(database: str) -> float:
    """CPU seconds of the live PostgreSQL backends connected to ``database``."""
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(cpu_of(pid) for (pid,) in rows)


#: How long a worker gets to stop after SIGTERM before it and its children are killed
#: (its jobs are all done by then; taskiq's worker does not stop on SIGTERM), in seconds.
STOP_TIMEOUT_S = 3


def _stop(worker: subprocess.Popen[bytes]) -> None:
    children = child_pids(worker.pid)
    worker.terminate()
    try:
        worker.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _round(peer: Peer, setup: Setup, messages: int, redis_pid: int) -> dict[str, float]:
    client = redis.Redis.from_url(setup.redis_url)
    client.flushdb()  # the private server's only database; nobody else uses it
    if peer.postgres:
        with psycopg.connect(setup.database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")
    keys = [f"key-{i % KEYS}" for i in range(messages)]

    def cpu_others(worker: subprocess.Popen[bytes] | None) -> float:
        total = cpu_of(redis_pid) + (cpu_of_tree(worker.pid) if worker else 0.0)
        return total + (_pg_cpu(setup.database_url) if peer.postgres else 0.0)

    cpu0, others0, started = cpu_self(), cpu_others(None), time.perf_counter()
    peer.enqueue(setup, keys)
    enqueue_s = time.perf_counter() - started
    enqueue_cpu = cpu_self() - cpu0 + cpu_others(None) - others0
    worker = subprocess.Popen(
        peer.worker_argv(setup), cwd=BASE_DIR, env=setup.env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        done = done_key(setup.namespace)
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        first: float | None = None
        cpu_first = 0.0
        while True:
            count = int(client.get(done) or 0)
            now = time.perf_counter()
            if first is None and count:
                first, first_count, cpu_first = now, count, cpu_others(worker)
            if count >= messages:
                break
            if worker.poll() is not None:
                raise BenchmarkError(f"{peer.name}: the worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{peer.name}: {count} of {messages} jobs done after {ROUND_TIMEOUT_S} s"
                )
            time.sleep(0.005)
        consume_cpu = cpu_others(worker) - cpu_first
        assert first is not None
    finally:
        _stop(worker)
    return {
        "enqueue_per_s": messages / enqueue_s,
        "consume_per_s": (messages - first_count) / max(now - first, 1e-6),
        "enqueue_cpu_us_per_job": enqueue_cpu / messages * 1e6,
        "consume_cpu_us_per_job": consume_cpu / max(messages - first_count, 1) * 1e6,
    }


def run_peers(messages: int, rounds: int, threads: int, progress: Progress) -> Report:
    """Enqueue and consume rates, and CPU per job, of every installed system."""
    available = [p for p in PEERS if importlib.util.find_spec(p.package) is not None]
    missing = sorted({p.package for p in PEERS} - {p.package for p in available})
    report = Report("peers")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "keys": KEYS,
        "missing": missing,
        "load_average": os.getloadavg(),
        "what": "N jobs (one Redis INCR each) over 256 keys enqueued from this process (T threads; taskiq "
        "and Procrastinate: T coroutines), then the system's worker (T threads or concurrency T) starts as "
        "a subprocess; consume rate from the first finished job to the last; CPU per job of this process, "
        "the worker and its children, a private redis-server and (Procrastinate) its PostgreSQL backends. "
        "Ours ordered per key; Procrastinate with lock=key and without; ANALYZE after each bulk enqueue "
        "(autovacuum is off here). Systems alternate within each round; medians",
    }
    results: dict[str, list[dict[str, float]]] = {p.name: [] for p in available}
    for peer in available:
        importlib.import_module(f"benchmarks.peer_apps.{peer.app}")
    with private_redis() as (url, redis_pid):
        database = _peers_database() if any(p.postgres for p in available) else ""
        for r in range(rounds):
            for peer in available:
                progress(f"peers round {r + 1}/{rounds}: {peer.name}")
                setup = Setup(url, f"bench-{uuid.uuid4().hex[:8]}", database, threads)
                results[peer.name].append(_round(peer, setup, messages, redis_pid))
                report.rounds.append({"system": peer.name, **results[peer.name][-1]})
    report.figures = {}
    for name, rows in results.items():
        for figure in ("consume_per_s", "enqueue_per_s", "consume_cpu_us_per_job", "enqueue_cpu_us_per_job"):
            report.figures[f"{name}_{figure}"] = round(median([row[figure] for row in rows]))
    ours = results.get("ours")
    for name, rows in results.items():
        if ours and name != "ours":
            ratios = [o["consume_per_s"] / b["consume_per_s"] for o, b in zip(ours, rows, strict=True)]
            report.figures[f"ours_consume_vs_{name}"] = round(median(ratios), 2)
    report.figures["missing"] = ", ".join(missing) or "none"
    report.figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    return report
