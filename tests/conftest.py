"""Fixtures: real Redis (clean for every test), private redis-servers, brokers, waits."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from brokers import RedisStreamsBroker

ROOT = Path(__file__).resolve().parents[1]


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


#: Ports handed out by this process: two callers never get the same one, even before
#: either binds it.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port whose Redis Cluster bus port (+10000) is free too.

    Both lie below the kernel's ephemeral range (32768 and up on Linux): a port found free
    here cannot be taken meanwhile by the local end of some outgoing connection (the load
    generator, a proxy, the workers' Redis connections) before its server binds it."""
    low, high = 10000, max(_EPHEMERAL_LOW - 10000 - 1, 12000)
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        if _bindable(port) and _bindable(port + 10000):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port pair found")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return str(settings.REDIS_URL)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """The tests' Redis database, empty at the start of the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def make_broker(redis_client: redis.Redis, redis_url: str) -> Iterator[Callable[..., RedisStreamsBroker]]:
    """Build brokers on the tests' Redis; closed at the end of the test."""
    made: list[RedisStreamsBroker] = []

    def make(**kwargs: Any) -> RedisStreamsBroker:
        kwargs.setdefault("namespace", "t")
        if "client" not in kwargs:
            kwargs.setdefault("url", redis_url)
        broker = RedisStreamsBroker(**kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        with contextlib.suppress(redis.RedisError):
            broker.close()


@dataclass
class RedisServer:
    """A private redis-server process started by a test."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    args: list[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2)

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=30)

    def start(self) -> None:
        self.process = _spawn_redis(self.port, self.directory, self.args)


def _spawn_redis(port: int, directory: Path, args: list[str]) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(ready, timeout=20, what=f"redis-server on port {port}")
    return process


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-server processes (stopped at the end of the test)."""
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        port = free_port()
        directory = tmp_path / f"redis-{port}"
        directory.mkdir()
        server = RedisServer(port, directory, _spawn_redis(port, directory, list(args)), list(args))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(kill=True)


@pytest.fixture
def redis_cluster(redis_server: Callable[..., RedisServer]) -> list[RedisServer]:
    """A local Redis Cluster of three masters, no replicas."""
    nodes = [
        redis_server("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--appendonly", "no")
        for _ in range(3)
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def ok() -> bool:
        return all(n.client().cluster("INFO").get("cluster_state") == "ok" for n in nodes)

    wait_for(ok, timeout=30, what="cluster_state:ok")
    return nodes


def project_subprocess(
    argv: list[str], env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (say, from ``messaging_project.launch``) from the repository root
    with the test environment."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(argv, cwd=ROOT, env=full_env, **kwargs)


def python_subprocess(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``python args...`` from the repository root with the test environment."""
    return project_subprocess([sys.executable, *args], env=env, **kwargs)
