"""Scenario ``cluster``: our broker on a 3-master Redis Cluster against one Redis node, in
the same run: enqueue and consume rates (a no-op actor), and the idle cost of polling
(a cluster cannot block on streams of several nodes) in Redis commands per second.

Both sides get private ``redis-server`` processes started here (no persistence), so that
neither is the shared development Redis."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import redis
from django.conf import settings
from dramatiq import Worker
from redis.cluster import RedisCluster

from benchmarks.jobs import consume_round, key_names
from benchmarks.report import BenchmarkError, Progress, Report, median
from brokers import RedisStreamsBroker

#: Keys the messages are spread over (as in the ``broker`` scenario).
KEYS = 100

#: Seconds the idle cost is measured over.
IDLE_S = 3.0


def _free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    import socket

    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise BenchmarkError("no free port pair for redis-server")


@contextmanager
def _servers(count: int, *, cluster: bool) -> Iterator[list[int]]:
    """``count`` private redis-server processes (a cluster of that many masters if asked)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchmarkError("redis-server is not installed (apt-get install redis-server)")
    directory = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for _ in range(count):
            port = _free_port()
            extra = (
                ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"] if cluster else []
            )
            processes.append(
                subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(directory), *extra],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            ports.append(port)
        for port in ports:
            _wait(functools.partial(_pings, port), "redis-server")
        if cluster:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            _wait(
                lambda: all(redis.Redis(port=p).cluster("INFO")["cluster_state"] == "ok" for p in ports),
                "cluster_state:ok",
            )
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise BenchmarkError(f"timed out waiting for {what}")


def _pings(port: int) -> bool:
    return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())


def _commands(ports: list[int]) -> int:
    return sum(int(redis.Redis(port=p).info("stats")["total_commands_processed"]) for p in ports)


def _round(
    connect: Callable[[], redis.Redis | RedisCluster], ports: list[int], messages: int, threads: int
) -> dict[str, float]:
    """One round on the nodes ``connect`` reaches: rates, then the idle cost."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisStreamsBroker(client=connect(), namespace=namespace, partitions=settings.STREAM_PARTITIONS)
    rates, _ = consume_round(
        broker,
        messages=messages,
        keys=key_names(KEYS),
        threads=threads,
        ordered=True,
        counter="",
        redis_call=False,
    )
    return {**rates, "idle_cmds_per_s": _idle_commands(connect(), namespace, ports, threads)}


def _idle_commands(
    client: redis.Redis | RedisCluster, namespace: str, ports: list[int], threads: int
) -> float:
    """Redis commands per second, summed over ``ports``, while a Worker waits for work."""
    broker = RedisStreamsBroker(client=client, namespace=namespace, partitions=settings.STREAM_PARTITIONS)

    @dramatiq.actor(broker=broker, queue_name="bench", actor_name="bench_job")
    def job(key: str, i: int) -> None: ...

    worker = Worker(broker, worker_threads=threads)
    worker.start()
    try:
        time.sleep(1.0)  # past the start (leases, first reads) into the idle rhythm
        before, started = _commands(ports), time.perf_counter()
        time.sleep(IDLE_S)
        return (_commands(ports) - before) / (time.perf_counter() - started)
    finally:
        worker.stop()
        broker.close()


def run_cluster(messages: int, rounds: int, threads: int, progress: Progress) -> Report:
    """Our broker on a 3-master cluster against one node: rates and idle commands/s."""
    report = Report("cluster")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "keys": KEYS,
        "partitions": settings.STREAM_PARTITIONS,
        "idle_seconds": IDLE_S,
        "what": "T producer threads enqueue N messages, then a Dramatiq Worker with T threads consumes "
        "them (no-op actor; consume rate from the first finished job), then a Worker with nothing to "
        "do for a few seconds: Redis commands/s summed over the nodes. Ours on 3 cluster masters "
        "(private redis-servers, no replicas) against ours on one private redis-server; rounds alternate",
    }
    on_cluster: list[dict[str, float]] = []
    on_node: list[dict[str, float]] = []
    with _servers(3, cluster=True) as cluster_ports, _servers(1, cluster=False) as node_ports:
        for r in range(rounds):
            for name, results in (("cluster", on_cluster), ("single", on_node)):
                progress(f"cluster round {r + 1}/{rounds}: {name}")
                connect: Callable[[], redis.Redis | RedisCluster]
                if name == "cluster":
                    connect = functools.partial(RedisCluster, host="127.0.0.1", port=cluster_ports[0])
                    ports = cluster_ports
                else:
                    connect = functools.partial(redis.Redis, port=node_ports[0])
                    ports = node_ports
                results.append(_round(connect, ports, messages, threads))
                report.rounds.append({"system": name, **results[-1]})

    def fig(results: list[dict[str, float]], key: str) -> float:
        return median([r[key] for r in results])

    report.figures = {
        "enqueue_per_s": round(fig(on_cluster, "enqueue_per_s")),
        "consume_per_s": round(fig(on_cluster, "consume_per_s")),
        "baseline_enqueue_per_s": round(fig(on_node, "enqueue_per_s")),
        "baseline_consume_per_s": round(fig(on_node, "consume_per_s")),
        "enqueue_ratio": round(fig(on_cluster, "enqueue_per_s") / fig(on_node, "enqueue_per_s"), 2),
        "consume_ratio": round(fig(on_cluster, "consume_per_s") / fig(on_node, "consume_per_s"), 2),
        "idle_cmds_per_s": round(fig(on_cluster, "idle_cmds_per_s")),
        "baseline_idle_cmds_per_s": round(fig(on_node, "idle_cmds_per_s")),
    }
    return report
