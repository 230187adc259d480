"""Each Redis step of the broker, alone: fenced by the lease, safe to run twice, and
"Redis unreachable" (refused or silent) always reported the same way."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq.errors import BrokerConnectionError
from redis.backoff import NoBackoff
from redis.retry import Retry

from brokers import NotReplicated, RedisStreamsBroker, partition_for
from brokers.records import StreamEntry
from brokers.store import Done
from tests.conftest import wait_for


@pytest.fixture
def broker(make_broker: Callable[..., RedisStreamsBroker]) -> RedisStreamsBroker:
    broker = make_broker()

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None: ...

    broker.store.ensure_groups("q", broker.partitions)
    return broker


def delivered(
    broker: RedisStreamsBroker, redis_client: redis.Redis, count: int = 1
) -> tuple[int, list[StreamEntry]]:
    """Send ``count`` messages of key "k", take the lease and read them as the consumer does."""
    for i in range(count):
        broker.actors["work"].send_with_options(args=(i,), partition_key="k")
    partition = partition_for("k", broker.partitions)
    redis_client.set(broker.keys("q", partition).lease, broker.consumer_name)
    _, read = broker.store.fetch("q", {}, {partition: 100})
    return partition, read[partition].entries


def test_dead_lettering_an_entry_twice_writes_one_dead_letter(broker, redis_client):
    partition, [entry] = delivered(broker, redis_client)
    step = {"reason": "max_retries", "error": "boom", "traceback": "", "attempts": 4}

    first = broker.store.dead_letter("q", partition, entry, **step)
    again = broker.store.dead_letter("q", partition, entry, **step)  # as after a lost reply

    assert first and again == ""
    assert [d.stream_id for d in broker.dead_letters("q")] == [entry.stream_id]
    assert broker.partition_stats("q")[partition].pending == 0


def test_retry_and_start_records_need_the_lease(broker, redis_client):
    partition, [entry] = delivered(broker, redis_client)
    keys = broker.keys("q", partition)
    entry.attempts, entry.starts = 1, 1
    redis_client.set(keys.lease, "somebody-else")

    assert broker.store.retry("q", partition, [entry], 1000) is False
    assert broker.store.mark_started("q", partition, [entry]) is False
    assert (
        broker.store.dead_letter("q", partition, entry, reason="x", error="", traceback="", attempts=1)
        is None
    )
    assert redis_client.hgetall(keys.state) == {}

    redis_client.set(keys.lease, broker.consumer_name)
    assert broker.store.retry("q", partition, [entry], 1000) is True
    assert broker.store.retry("q", partition, [entry], 1000) is True  # again: same values
    state = redis_client.hgetall(keys.state)
    assert state[f"a:{entry.stream_id}".encode()] == b"1" and state[f"s:{entry.stream_id}".encode()] == b"1"


def test_a_reader_whose_lease_expired_takes_nothing(broker, redis_client):
    """A process paused past its lease wakes up and reads: the read is refused, so the
    entries stay undelivered for the partition's new owner, in order."""
    broker.actors["work"].send_with_options(args=(0,), partition_key="k")
    partition = partition_for("k", broker.partitions)
    redis_client.set(broker.keys("q", partition).lease, "the-new-owner")

    claimed, read = broker.store.fetch("q", {partition: ("-", 10)}, {partition: 10})

    assert claimed[partition].lost and read[partition].lost
    stats = broker.partition_stats("q")[partition]
    assert stats.undelivered == 1 and stats.pending == 0


def test_a_new_owner_claims_pending_entries_oldest_first_with_their_durable_counts(broker, redis_client):
    partition, entries = delivered(broker, redis_client, count=3)
    entries[0].attempts = 2
    broker.store.retry("q", partition, entries[:1], 60_000)
    redis_client.set(broker.keys("q", partition).lease, "next-owner")
    successor = RedisStreamsBroker(client=redis_client, namespace="t")
    successor.consumer_name = successor.store.consumer_name = "next-owner"

    claimed, _ = successor.store.fetch("q", {partition: ("-", 2)}, {})
    page = claimed[partition]
    rest, _ = successor.store.fetch("q", {partition: (page.cursor, 2)}, {})

    assert [e.stream_id for e in page.entries + rest[partition].entries] == [e.stream_id for e in entries]
    first = page.entries[0]
    assert (first.attempts, first.deliveries, first.suspect) == (2, 2, True)
    assert 50_000 < first.retry_in_ms <= 60_000
    assert not page.done and rest[partition].done


def test_entries_handed_back_on_a_clean_release_are_not_suspected(broker, redis_client):
    partition, entries = delivered(broker, redis_client, count=2)
    broker.store.release("q", {partition: entries})
    redis_client.set(broker.keys("q", partition).lease, broker.consumer_name)

    claimed, _ = broker.store.fetch("q", {partition: ("-", 10)}, {})

    assert [e.suspect for e in claimed[partition].entries] == [False, False]
    assert [e.deliveries for e in claimed[partition].entries] == [2, 2]


def test_an_entry_whose_earlier_run_never_finished_stays_suspect_when_handed_back_unstarted(
    broker, redis_client
):
    """A run of it started and never finished (its process died); its next holder handed it
    back before starting it. Its next run must still be recorded and counted, or a message
    that kills its worker runs once more than ``max_deliveries`` for every such hand-back."""
    partition, [entry, other] = delivered(broker, redis_client, count=2)
    entry.starts = 1
    assert broker.store.mark_started("q", partition, [entry])
    broker.store.release("q", {partition: [entry, other]})
    redis_client.set(broker.keys("q", partition).lease, broker.consumer_name)

    claimed, _ = broker.store.fetch("q", {partition: ("-", 10)}, {})

    assert [(e.suspect, e.starts) for e in claimed[partition].entries] == [(True, 1), (False, 0)]


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts connections and never answers (a black-holed Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_redis_that_does_not_answer_is_a_connection_error_everywhere(silent_redis):
    # No client-side retries (redis-py's default retries three times with backoff).
    client = redis.Redis(
        port=silent_redis, socket_connect_timeout=0.3, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    broker = RedisStreamsBroker(client=client, namespace="t")

    @dramatiq.actor(broker=broker, queue_name="q")
    def work() -> None: ...

    for call in (
        lambda: work.send_with_options(partition_key="k"),
        broker.ping,
        lambda: broker.partition_stats("q"),
        lambda: broker.dead_letters("q"),
        lambda: broker.locate("q", 0, "some-id"),
        lambda: broker.store.ack("q", {0: Done(ids=["1-0"])}),
    ):
        with pytest.raises(BrokerConnectionError):
            call()


def test_an_enqueue_waits_for_replicas_and_says_so_when_too_few_confirm(redis_server):
    master = redis_server("--repl-diskless-sync-delay", "0")
    replica = redis_server("--replicaof", "127.0.0.1", str(master.port))
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=20)
    broker = RedisStreamsBroker(
        client=master.client(), namespace="t", min_replicas_ack=1, replicas_ack_timeout_ms=2000
    )

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None: ...

    sent = work.send_with_options(args=(1,), partition_key="k", idempotency_key="k-1")
    stream = broker.keys("q", sent.options["partition"]).stream
    assert replica.client().xlen(stream) == 1  # the replica holds it: WAIT said so

    replica.stop()
    with pytest.raises(NotReplicated):
        work.send_with_options(args=(2,), partition_key="k", idempotency_key="k-2")
    # Once a replica is back, the retry with the same key (as a client retries after a 503)
    # is answered with the first message, now replicated, and adds nothing.
    replica.start()
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=20)
    [repeat] = broker.enqueue_many(
        [work.message_with_options(args=(2,), partition_key="k", idempotency_key="k-2")]
    )
    assert repeat.options["idempotent_hit"] is True
    assert master.client().xlen(stream) == replica.client().xlen(stream) == 2
