"""The processes a scenario measures: the API server and the workers as subprocesses
(started by ``messaging_project.launch``), their CPU time, memory and partition leases."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from benchmarks.report import BenchmarkError, redis_client
from brokers.keys import partition_keys
from delivery.broker import MESSAGES_QUEUE
from messaging_project import launch
from messaging_project.config import BASE_DIR

#: How long the API server and the workers get to start, in seconds.
START_TIMEOUT_S = 60


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of the subprocesses: this one, quieter, with the baseline view on."""
    env = dict(os.environ)
    env.update(
        {
            "LOG_LEVEL": "WARNING",
            "ENABLE_BENCHMARK_VIEWS": "1",
            # One sender posts far past the default per-user rate: measure capacity, not 429s.
            "API_THROTTLE_USER_RATE": "none",
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-"),
            **extra,
        }
    )
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(env: dict[str, str], workers: int = 2) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The API server (gunicorn, ``workers`` processes) on a free port, once it answers."""
    port = free_port()
    process = subprocess.Popen(
        launch.gunicorn_argv(bind=f"127.0.0.1:{port}", workers=workers),
        cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not launch.answers_ok(port, "/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError("the API server did not start")
            time.sleep(0.1)
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def run_workers(
    env: dict[str, str], processes: int = 2, threads: int = 8
) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py runworkers`` (its metrics endpoint off), stopped afterwards."""
    process = subprocess.Popen(
        launch.runworkers_argv(processes=processes, threads=threads, shutdown_timeout_ms=10_000),
        env={**env, "METRICS_PORT": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(c) for c in out.split()]


def cpu_self() -> float:
    """CPU seconds this process used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """CPU seconds a live process (and its waited-for children) used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


def cpu_of_tree(pid: int) -> float:
    """CPU seconds of a live process and its live children."""
    return cpu_of(pid) + sum(cpu_of(c) for c in child_pids(pid))


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process and its live children, in MB."""
    total_kb = 0
    for process in (pid, *child_pids(pid)):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def self_peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def lease_holders(workers: subprocess.Popen[bytes], namespace: str) -> dict[int, set[int]]:
    """The partitions each worker process (a child of ``workers``) holds a lease on."""
    client = redis_client()
    children = set(child_pids(workers.pid))
    holders: dict[int, set[int]] = {}
    for p in range(settings.STREAM_PARTITIONS):
        value = client.get(partition_keys(namespace, MESSAGES_QUEUE, p).lease)
        if value:
            # The holder is a consumer name, ``{hostname}-{pid}-{random}``.
            pid = int(str(value.decode() if isinstance(value, bytes) else value).rsplit("-", 2)[1])
            if pid in children:
                holders.setdefault(pid, set()).add(p)
    return holders


def wait_for_balanced_leases(
    workers: subprocess.Popen[bytes], namespace: str, processes: int = 2
) -> dict[int, set[int]]:
    """Wait until the worker processes share the partitions evenly (measuring while they
    still rebalance would count the hand-over of partitions as latency); their holdings."""
    partitions = settings.STREAM_PARTITIONS
    fair = {partitions // processes, -(-partitions // processes)}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        holders = lease_holders(workers, namespace)
        counts = [len(held) for held in holders.values()]
        if len(holders) == processes and sum(counts) == partitions and set(counts) <= fair:
            return holders
        time.sleep(0.1)
    raise BenchmarkError(
        f"the {processes} worker processes did not share the partitions within {START_TIMEOUT_S} s"
    )
