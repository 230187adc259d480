"""The broker across worker processes: leases, rebalancing, crash takeover, graceful stop,
Redis restarts and Redis Cluster."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from redis.cluster import RedisCluster

from brokers import RedisStreamsBroker, partition_for
from tests.conftest import RedisServer, python_subprocess, wait_for

KEYS = [f"conv-{k}" for k in range(32)]


def _declare(broker: RedisStreamsBroker) -> Any:
    if "record" in broker.actors:
        return broker.actors["record"]

    @dramatiq.actor(broker=broker, queue_name="ordered", max_retries=100, min_backoff=10, max_backoff=100)
    def record(key: str, i: int) -> None: ...

    return record


def _enqueue(broker: RedisStreamsBroker, per_key: int, start: int = 0) -> None:
    record = _declare(broker)
    for i in range(start, start + per_key):
        for key in KEYS:
            record.send_with_options(args=(key, i), partition_key=key)


def _log(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange("log", 0, -1)]


def _assert_ordered_and_complete(
    records: list[dict[str, Any]], per_key: int, may_overlap: list[dict[str, Any]] | None = None
) -> None:
    """Every message ran; per key, in order, one at a time, whichever processes ran them.

    A message runs again after a failure (retried in place, in the same process) or after a
    crash, when its ack was not written yet: then its key resumes at its oldest unacked
    message and goes on in order from there.
    """
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["start"]):
        runs[r["key"]].append(r)
    assert {key: sorted({r["i"] for r in rs}) for key, rs in runs.items()} == {
        key: list(range(per_key)) for key in KEYS
    }
    for key, rs in runs.items():
        for before, after in itertools.pairwise(rs):
            if may_overlap and (before in may_overlap or after in may_overlap):
                continue
            assert after["start"] >= before["end"], f"key {key} ran {before} and {after} at once"
            # Within one process a key moves to its next message, or runs the same one again
            # (a retry in place: this test's own log write can fail with Redis going away
            # after the write was done).
            assert after["i"] in (before["i"], before["i"] + 1) or after["pid"] != before["pid"], (
                f"key {key} went from {before['i']} to {after['i']} within one process"
            )
            if after["i"] < before["i"]:  # a resumption after a crash: back to an unacked one
                assert after["pid"] != before["pid"] and before["i"] - after["i"] < 30


class Workers:
    """Worker processes of ``tests.broker.worker_app``."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, *, sleep_ms: float = 2, threads: int = 4, extra: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        process = python_subprocess(
            "-m",
            "tests.broker.worker_app",
            self.url,
            self.namespace,
            "--sleep-ms",
            str(sleep_ms),
            "--threads",
            str(threads),
            *extra,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def workers(redis_url: str, redis_client: redis.Redis) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(url: str = redis_url, namespace: str = "t") -> Workers:
        w = Workers(url, namespace)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop_all()


def test_two_then_three_worker_processes_never_run_one_key_at_once_and_keep_its_order(
    make_broker, workers, redis_client
):
    per_key = 80
    _enqueue(make_broker(), per_key)
    pool = workers()
    pool.start(sleep_ms=10)
    pool.start(sleep_ms=10)
    wait_for(lambda: redis_client.llen("log") > 300, timeout=60, what="progress")
    third = pool.start(sleep_ms=10)  # a process joining causes a rebalance mid-stream
    wait_for(lambda: any(r["pid"] == third.pid for r in _log(redis_client)), timeout=30, what="rebalance")
    wait_for(
        lambda: len({(r["key"], r["i"]) for r in _log(redis_client)}) == per_key * len(KEYS), timeout=120
    )

    records = _log(redis_client)
    _assert_ordered_and_complete(records, per_key)
    assert len({r["pid"] for r in records}) == 3, "the partitions were not spread over the processes"


def test_sigkilled_worker_process_loses_nothing_and_its_partitions_move_within_5s(
    make_broker, workers, redis_client
):
    per_key = 60
    _enqueue(make_broker(), per_key)
    pool = workers()
    victim = pool.start(sleep_ms=5)
    pool.start(sleep_ms=5)
    wait_for(lambda: sum(1 for r in _log(redis_client) if r["pid"] == victim.pid) > 100, timeout=60)

    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    recent = {r["key"] for r in _log(redis_client) if r["pid"] == victim.pid and r["end"] > killed_at - 0.5}
    victim_partitions = {partition_for(k, 16) for k in recent}
    assert victim_partitions

    wait_for(
        lambda: len({(r["key"], r["i"]) for r in _log(redis_client)}) == per_key * len(KEYS), timeout=120
    )
    records = _log(redis_client)
    _assert_ordered_and_complete(records, per_key)
    resumed = min(
        r["start"]
        for r in records
        if r["pid"] != victim.pid
        and r["start"] > killed_at
        and partition_for(r["key"], 16) in victim_partitions
    )
    takeover_s = resumed - killed_at
    print(f"takeover after SIGKILL: {takeover_s:.2f}s")
    assert takeover_s <= 5.0
    # Only what the victim finished in its last moments (acks not yet written) ran again.
    first_run: dict[tuple[str, int], dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r["start"]):
        first_run.setdefault((r["key"], r["i"]), r)
    reruns = [r for r in records if first_run[(r["key"], r["i"])] is not r]
    assert all(first_run[(r["key"], r["i"])]["pid"] == victim.pid for r in reruns)
    assert all(first_run[(r["key"], r["i"])]["end"] > killed_at - 1.0 for r in reruns), reruns


def test_sigterm_finishes_the_message_in_hand_and_hands_partitions_over_at_once(
    make_broker, workers, redis_client
):
    per_key = 30
    _enqueue(make_broker(), per_key)
    pool = workers()
    first = pool.start(sleep_ms=20)
    wait_for(lambda: redis_client.llen("log") > 50, timeout=60)
    second = pool.start(sleep_ms=20)
    wait_for(lambda: any(r["pid"] == second.pid for r in _log(redis_client)), timeout=30)

    stopped_at = time.time()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    wait_for(
        lambda: len({(r["key"], r["i"]) for r in _log(redis_client)}) == per_key * len(KEYS), timeout=120
    )

    records = _log(redis_client)
    _assert_ordered_and_complete(records, per_key)
    # nothing ran twice: a graceful stop acks what it finished and leaves the rest pending
    assert len(records) == per_key * len(KEYS)
    assert all(r["pid"] == second.pid for r in records if r["start"] > stopped_at + 3)
    # the survivor owns all 16 leases (released at once, not after their TTL)
    wait_for(
        lambda: all(redis_client.get(f"{{t:{p}}}:q:ordered:lease") is not None for p in range(16)),
        timeout=5,
    )


def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_deliveries_and_all_else_finishes(
    make_broker, workers, redis_client
):
    per_key = 20
    producer = make_broker()
    record = _declare(producer)
    _enqueue(producer, per_key // 2)
    record.send_with_options(args=("poison", 0), partition_key="poison")
    _enqueue(producer, per_key - per_key // 2, start=per_key // 2)
    extra = ("--crash-on", "poison", "--max-deliveries", "4", "--lease-ttl-ms", "1000")
    pool = workers()
    pool.start(sleep_ms=2, extra=extra)
    pool.start(sleep_ms=2, extra=extra)

    def supervise() -> bool:  # as runworkers does: a worker process that dies is restarted
        for i, process in enumerate(pool.processes):
            if process.poll() is not None:
                pool.processes[i] = pool.start(sleep_ms=2, extra=extra)
                pool.processes.pop()
        done = len({(r["key"], r["i"]) for r in _log(redis_client)}) == per_key * len(KEYS)
        return done and producer.partition_stats("ordered")[partition_for("poison", 16)].dead_letters == 1

    wait_for(
        supervise, timeout=90, interval=0.1, what="everything but the poison done, the poison dead-lettered"
    )

    runs = [json.loads(raw) for raw in redis_client.lrange("started", 0, -1) if b'"poison"' in raw]
    assert len(runs) == 4, "the poison ran more (or fewer) times than max_deliveries"
    [dead] = producer.dead_letters("ordered")
    assert dead.reason == "crashed_worker" and dead.message is not None and dead.message.args == ("poison", 0)
    _assert_ordered_and_complete([r for r in _log(redis_client) if r["key"] != "poison"], per_key)


def test_a_worker_paused_past_its_lease_starts_nothing_when_it_wakes_up(make_broker, workers, redis_client):
    per_key = 40
    _enqueue(make_broker(), per_key)
    pool = workers()
    lease = ("--lease-ttl-ms", "1000")
    paused = pool.start(sleep_ms=5, extra=lease)
    pool.start(sleep_ms=5, extra=lease)
    wait_for(lambda: sum(1 for r in _log(redis_client) if r["pid"] == paused.pid) > 50, timeout=60)

    paused.send_signal(signal.SIGSTOP)  # a stop-the-world pause, longer than its leases
    # the other process takes the paused one's partitions over (their leases expire)
    wait_for(
        lambda: len({redis_client.get(f"{{t:{p}}}:q:ordered:lease") for p in range(16)} - {None}) == 1,
        timeout=30,
        what="one process holding every lease",
    )
    resumed_at = time.time()  # before it runs again: anything it starts from now is later
    paused.send_signal(signal.SIGCONT)
    wait_for(
        lambda: len({(r["key"], r["i"]) for r in _log(redis_client)}) == per_key * len(KEYS), timeout=120
    )

    records = _log(redis_client)
    # What it had in hand when it was paused finishes late (and may run again elsewhere: the
    # persist actor's idempotent insert makes that harmless); what it had handed out but
    # not started is skipped; everything else ran one per key at a time, in order.
    in_hand = [r for r in records if r["pid"] == paused.pid and r["start"] < resumed_at < r["end"]]
    assert len(in_hand) <= 4  # its worker threads
    _assert_ordered_and_complete(records, per_key, may_overlap=in_hand)


def test_consumer_survives_a_redis_restart_with_aof_and_loses_no_acknowledged_message(
    redis_server: Callable[..., RedisServer], workers
):
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    client = server.client()
    producer = RedisStreamsBroker(server.url, namespace="t")
    per_key = 30
    _enqueue(producer, per_key // 2)
    pool = workers(url=server.url)
    pool.start(sleep_ms=3)
    wait_for(lambda: client.llen("log") > 100, timeout=60)

    server.stop()  # SIGTERM: Redis flushes its AOF and exits
    server.start()
    _enqueue(producer, per_key - per_key // 2, start=per_key // 2)
    wait_for(lambda: len({(r["key"], r["i"]) for r in _log(client)}) == per_key * len(KEYS), timeout=120)
    _assert_ordered_and_complete(_log(client), per_key)


def test_order_holds_on_a_three_master_redis_cluster(redis_cluster: list[RedisServer]):
    client = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    broker = RedisStreamsBroker(client=client, namespace="c")
    seen: dict[str, list[int]] = defaultdict(list)
    failed: set[tuple[str, int]] = set()

    @dramatiq.actor(broker=broker, queue_name="ordered", max_retries=5, min_backoff=10, max_backoff=20)
    def record(key: str, i: int) -> None:
        if i == 3 and (key, i) not in failed:
            failed.add((key, i))
            raise RuntimeError("retry me in place")
        seen[key].append(i)

    for i in range(20):
        for key in KEYS[:8]:
            record.send_with_options(
                args=(key, i), partition_key=key, sequence_key=key, idempotency_key=f"{key}/{i}"
            )
    # the partitions really are spread over the shards
    slots = {client.keyslot(broker.keys("ordered", p).stream) for p in range(16)}
    nodes = {client.get_node_from_key(broker.keys("ordered", p).stream).name for p in range(16)}
    assert len(slots) == 16 and len(nodes) == 3

    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        broker.join("ordered", timeout=60_000)
    finally:
        worker.stop()
        broker.close()
    assert dict(seen) == {key: list(range(20)) for key in KEYS[:8]}
    # what the enqueue script keeps lives in the partition's slot, where the script runs
    located = record.send_with_options(args=("z", 0), partition_key="z", locate=True, idempotency_key="z/0")
    found = broker.locate("ordered", partition_for("z", 16), located.message_id)
    assert found is not None and found.args == ("z", 0)
