"""The whole service on a Redis Cluster of three masters and three replicas (real processes):
a worker SIGKILLed, then the master holding the most partitions SIGKILLed and replaced by
its replica. With ``REDIS_MIN_REPLICAS_ACK=1`` nothing acknowledged is lost; with 0 what
can be lost is only what was acknowledged just before the master died (asynchronous
replication), as docs/scaling.md says."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from redis.cluster import RedisCluster

from brokers import RedisStreamsBroker, partition_for
from brokers.keys import partition_keys
from delivery.broker import MESSAGES_QUEUE
from delivery.models import DeadLetter, Message
from tests.acceptance import harness
from tests.acceptance.conftest import CONVERSATIONS, PER_CONVERSATION, Stack
from tests.acceptance.harness import Ack, LoadGenerator
from tests.conftest import ROOT, RedisServer, wait_for

pytestmark = pytest.mark.acceptance

#: How long a silent node counts as failed: short, so that a failover takes a second or two.
NODE_TIMEOUT_MS = 1000

#: Replication on loopback lags by far less than this: an acknowledged write can be lost in
#: a failover only if it was acknowledged this close to the master's death.
LOSS_WINDOW_S = 1.0


class Cluster:
    """Three masters, each with one replica, started by the test."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process.poll() is None]

    def info(self, node: RedisServer, section: str) -> dict[str, Any]:
        return dict(node.client().info(section))

    def healthy(self, masters: int = 3) -> bool:
        """``cluster_state:ok`` everywhere, ``masters`` masters, each with a replica in sync."""
        try:
            live = self.live()
            if any(n.client().cluster("INFO").get("cluster_state") != "ok" for n in live):
                return False
            roles = [self.info(n, "replication") for n in live]
            in_sync = [r for r in roles if r["role"] == "slave" and r.get("master_link_status") == "up"]
            return sum(r["role"] == "master" for r in roles) == masters and len(in_sync) == masters
        except Exception:  # a node still starting
            return False

    def master_of(self, key: str) -> RedisServer:
        client = RedisCluster(host="127.0.0.1", port=self.live()[0].port)
        try:
            port = client.get_node_from_key(key).port
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)


@pytest.fixture
def cluster(redis_server: Callable[..., RedisServer]) -> Iterator[Cluster]:
    nodes = [
        redis_server(
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--appendonly",
            "no",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        )
        for _ in range(6)
    ]
    subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    made = Cluster(nodes)
    wait_for(made.healthy, timeout=60, what="3 masters with a replica each, cluster_state:ok")
    yield made


def _run(
    stack: Stack, services: list[harness.Service], cluster: Cluster, min_replicas_ack: int
) -> dict[str, Any]:
    """Load, a worker SIGKILLed, the busiest master SIGKILLed; returns what happened."""
    env = stack.env(REDIS_URL=cluster.url, REDIS_CLUSTER="true", REDIS_MIN_REPLICAS_ACK=str(min_replicas_ack))
    api, port = harness.api_server(env, stack.log_dir)
    workers = harness.workers(env, stack.log_dir, processes=2)
    services += [api, workers]
    gen = LoadGenerator(port, stack.token)
    load = threading.Thread(target=gen.run, args=(stack.plan(),), daemon=True)
    load.start()
    total = CONVERSATIONS * PER_CONVERSATION

    # Both kills land while clients are still sending and workers still persisting.
    wait_for(
        lambda: len(gen.acks) >= total // 6 and Message.objects.count() >= 50,
        timeout=120,
        what="progress before the worker kill",
    )
    os.kill(random.choice(wait_for(workers.children, timeout=30, what="worker processes")), signal.SIGKILL)
    wait_for(lambda: len(gen.acks) >= total // 3, timeout=120, what="progress before the master kill")
    # The master holding the most partitions.
    by_master = Counter(
        cluster.master_of(partition_keys(settings.STREAM_NAMESPACE, MESSAGES_QUEUE, p).stream).port
        for p in range(settings.STREAM_PARTITIONS)
    )
    victim_port, victim_partitions = by_master.most_common(1)[0]
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    moved = {
        p
        for p in range(settings.STREAM_PARTITIONS)
        if cluster.master_of(partition_keys(settings.STREAM_NAMESPACE, MESSAGES_QUEUE, p).stream) is victim
    }
    victim.stop(kill=True)
    killed_at = time.monotonic()
    # Its replica takes over; the old master comes back empty and follows it (so that a
    # WAIT for one replica can be answered again).
    wait_for(lambda: cluster.healthy(masters=3) or _failed_over(cluster, victim), timeout=60, what="failover")
    victim.start()
    wait_for(cluster.healthy, timeout=60, what="the old master back as a replica, in sync")

    load.join(timeout=300)
    assert not load.is_alive()
    assert gen.retries > 0, "the clients saw the failover (503s) and retried with their keys"
    assert len(gen.acks) == total, "every message was acknowledged in the end (503s retried with their keys)"
    # Done when the cluster holds nothing left to deliver: then what is not a row is lost.
    observer = _broker(cluster)
    try:
        observer.join(MESSAGES_QUEUE, interval=200, timeout=180_000)
    finally:
        observer.close()
    persisted = {str(i) for i in Message.objects.values_list("id", flat=True)}
    lost = [a for a in gen.acks if a.message_id not in persisted]
    return {
        "env": env,
        "log_dir": stack.log_dir,
        "gen": gen,
        "lost": lost,
        "killed_at": killed_at,
        "moved": moved,
        "victim_partitions": victim_partitions,
    }


def _failed_over(cluster: Cluster, victim: RedisServer) -> bool:
    """Two masters and the promoted replica serve every slot."""
    try:
        live = cluster.live()
        return (
            all(n.client().cluster("INFO").get("cluster_state") == "ok" for n in live)
            and sum(cluster.info(n, "replication")["role"] == "master" for n in live) == 3
        )
    except Exception:
        return False


def _broker(cluster: Cluster) -> RedisStreamsBroker:
    """A broker on the cluster, to look at its queues as the service's processes do."""
    client = RedisCluster(host="127.0.0.1", port=cluster.live()[0].port)
    return RedisStreamsBroker(
        client=client, partitions=settings.STREAM_PARTITIONS, namespace=settings.STREAM_NAMESPACE
    )


def test_failover_with_min_replicas_ack_loses_nothing_acknowledged(stack, services, cluster):
    result = _run(stack, services, cluster, min_replicas_ack=1)
    gen: LoadGenerator = result["gen"]
    print(
        f"\ncluster failover, REDIS_MIN_REPLICAS_ACK=1: {len(gen.acks)} acknowledged, "
        f"{gen.retries} retries, {len(result['lost'])} lost; killed master held "
        f"{result['victim_partitions']} of {settings.STREAM_PARTITIONS} partitions"
    )
    assert result["lost"] == []
    harness.assert_every_ack_persisted_once_in_order(gen.acks)
    # The other Redis users of the service work on the cluster too: the lag collector of
    # the workers' metrics and the operators' command.
    env = result["env"]

    def lag_reported() -> bool:
        url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
        scrape = urllib.request.urlopen(url, timeout=10).read().decode()
        Path(result["log_dir"], "scrape.txt").write_text(scrape)  # for a failure's post-mortem
        return 'stream_partition_lag{consumer_group="messages",partition="0"} 0.0' in scrape

    wait_for(lag_reported, timeout=30, what="the workers' metrics to report partition lag 0")
    listed = subprocess.run(
        [sys.executable, "manage.py", "deadletters", "list"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert DeadLetter.objects.count() == 0


def test_failover_without_replica_ack_loses_at_most_the_last_acknowledged(stack, services, cluster):
    result = _run(stack, services, cluster, min_replicas_ack=0)
    gen: LoadGenerator = result["gen"]
    lost: list[Ack] = result["lost"]
    print(
        f"\ncluster failover, REDIS_MIN_REPLICAS_ACK=0: {len(gen.acks)} acknowledged, "
        f"{gen.retries} retries, {len(lost)} lost"
        + (
            f" (acknowledged {min(result['killed_at'] - a.acknowledged_at for a in lost):.3f} to "
            f"{max(result['killed_at'] - a.acknowledged_at for a in lost):.3f} s before the kill)"
            if lost
            else ""
        )
    )
    # What can vanish: writes of the dead master not yet on its replica, i.e. messages of
    # its partitions acknowledged in the last moments before it died.
    for ack in lost:
        assert partition_for(ack.conversation_id, settings.STREAM_PARTITIONS) in result["moved"]
        assert result["killed_at"] - ack.acknowledged_at < LOSS_WINDOW_S
    lost_ids = {a.message_id for a in lost}
    harness.assert_every_ack_persisted_once_in_order([a for a in gen.acks if a.message_id not in lost_ids])
