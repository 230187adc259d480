"""The broker in one process: Dramatiq's contract, order, retries in place, dead letters."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout
from dramatiq.middleware import Middleware, Retries
from prometheus_client import REGISTRY

from brokers import DeadLetterNotFound, InPlaceRetries, RedisStreamsBroker, partition_for
from brokers.keys import where_field
from brokers.store import Done
from tests.conftest import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def broker(make_broker: Callable[..., RedisStreamsBroker]) -> RedisStreamsBroker:
    return make_broker()


@pytest.fixture
def start_worker(broker: RedisStreamsBroker) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(threads: int = 4, target: RedisStreamsBroker | None = None) -> Worker:
        worker = Worker(target or broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def test_messages_of_one_partition_key_run_in_enqueue_order_across_16_partitions(broker, start_worker):
    seen: dict[str, list[int]] = defaultdict(list)

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(key: str, i: int) -> None:
        seen[key].append(i)

    for i in range(50):
        for k in range(100):
            work.send_with_options(args=(f"key-{k}", i), partition_key=f"key-{k}")
    start_worker(threads=8)
    broker.join("q", timeout=60_000)

    assert {key: order for key, order in seen.items()} == {f"key-{k}": list(range(50)) for k in range(100)}


def test_send_returns_the_message_with_its_partition_and_stream_id(broker):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(x: int) -> None: ...

    message = work.send_with_options(args=(1,), partition_key="conv-1")

    assert message.options["partition"] == partition_for("conv-1", 16)
    assert message.options["stream_id"]
    assert broker.partition_stats("q")[message.options["partition"]].undelivered == 1


def test_failed_message_blocks_its_key_until_retried_in_place(broker, start_worker):
    runs: list[tuple[str, int]] = []
    failures: Counter[tuple[str, int]] = Counter()

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=5, min_backoff=50, max_backoff=100)
    def work(key: str, i: int) -> None:
        if (key, i) == ("a", 3) and failures[(key, i)] < 2:
            failures[(key, i)] += 1
            raise RuntimeError("transient")
        runs.append((key, i))

    for i in range(10):
        work.send_with_options(args=("a", i), partition_key="a")
        work.send_with_options(args=("b", i), partition_key="b")
    start_worker()
    broker.join("q", timeout=30_000)

    assert failures[("a", 3)] == 2
    assert [i for key, i in runs if key == "a"] == list(range(10))
    assert [i for key, i in runs if key == "b"] == list(range(10))
    assert broker.dead_letters("q") == []


def two_keys_of_one_partition() -> tuple[str, str]:
    partition = partition_for("slow", 16)
    other = next(f"key-{i}" for i in range(1000) if partition_for(f"key-{i}", 16) == partition)
    return "slow", other


def test_a_key_waiting_for_its_retry_holds_up_only_itself_not_its_partition(broker, start_worker):
    slow, fast = two_keys_of_one_partition()
    done_fast = threading.Event()
    attempts: Counter[str] = Counter()
    order: dict[str, list[int]] = defaultdict(list)

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=3, min_backoff=2000, max_backoff=2000)
    def work(key: str, i: int) -> None:
        attempts[key] += 1
        if key == slow and attempts[key] == 1:
            raise RuntimeError("first try fails")
        order[key].append(i)
        if key == fast and i == 9:
            done_fast.set()

    for i in range(10):  # the slow key's messages come first in the shared partition
        work.send_with_options(args=(slow, i), partition_key=slow)
    for i in range(10):
        work.send_with_options(args=(fast, i), partition_key=fast)
    start_worker()

    assert done_fast.wait(timeout=1.5), "a key of the same partition waited for the failing key's backoff"
    assert order[slow] == []
    broker.join("q", timeout=10_000)
    assert order == {slow: list(range(10)), fast: list(range(10))}


def test_the_lookahead_bounds_what_a_partition_holds_past_a_blocked_key(make_broker, start_worker):
    broker = make_broker(lookahead=5)
    slow, fast = two_keys_of_one_partition()
    finished: dict[str, float] = {}
    failed_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=3)
    def work(key: str, i: int) -> None:
        if key == slow and not failed_at:
            failed_at.append(time.monotonic())
            raise dramatiq.Retry(delay=1500)
        finished[f"{key}/{i}"] = time.monotonic()

    for i in range(8):
        work.send_with_options(args=(slow, i), partition_key=slow)
    work.send_with_options(args=(fast, 0), partition_key=fast)
    full_before = _sample("stream_lookahead_full_total", partition_for(slow, 16))
    start_worker(target=broker)
    broker.join("q", timeout=20_000)

    # The partition held 5 entries of the blocked key and read no further until its retry.
    assert finished[f"{fast}/0"] - failed_at[0] >= 1.4
    assert _sample("stream_lookahead_full_total", partition_for(slow, 16)) > full_before


def _sample(name: str, partition: int) -> float:
    return REGISTRY.get_sample_value(name, {"partition": str(partition)}) or 0.0


def test_batches_mix_keys_but_never_hold_one_key_twice_at_once(broker, start_worker):
    keys = [f"key-{i}" for i in range(2000) if partition_for(f"key-{i}", 16) == 3][:40]
    lock = threading.Lock()
    running: set[str] = set()
    seen: dict[str, list[int]] = defaultdict(list)
    mixed: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", batch_size=6)
    def work(messages: list[dramatiq.Message]) -> None:
        batch_keys = {m.args[0] for m in messages}
        with lock:
            assert not batch_keys & running, "a key in two batches at once"
            running.update(batch_keys)
            mixed.append(len(batch_keys))
        time.sleep(0.01)
        with lock:
            for m in messages:
                seen[m.args[0]].append(m.args[1])
            running.difference_update(batch_keys)

    for i in range(3):
        for key in keys:
            work.send_with_options(args=(key, i), partition_key=key)
    start_worker(threads=4)
    broker.join("q", timeout=20_000)

    assert seen == {key: list(range(3)) for key in keys}
    assert max(mixed) > 1


def test_other_partitions_go_on_while_one_waits_for_its_retry(broker, start_worker):
    assert partition_for("slow", 16) != partition_for("fast", 16)
    done_fast = threading.Event()
    attempts: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=3, min_backoff=2000, max_backoff=2000)
    def work(key: str, i: int) -> None:
        attempts[key] += 1
        if key == "slow" and attempts[key] == 1:
            raise RuntimeError("first try fails")
        if key == "fast" and i == 9:
            done_fast.set()

    work.send_with_options(args=("slow", 0), partition_key="slow")
    for i in range(10):
        work.send_with_options(args=("fast", i), partition_key="fast")
    start_worker()

    assert done_fast.wait(timeout=1.5), "the fast partition waited for the slow partition's backoff"
    assert attempts["slow"] == 1
    broker.join("q", timeout=10_000)
    assert attempts["slow"] == 2


def test_message_is_dead_lettered_after_its_last_attempt_and_its_partition_moves_on(broker, start_worker):
    runs: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=2, min_backoff=10, max_backoff=20)
    def work(i: int) -> None:
        if i == 1:
            raise ValueError(f"poison {i}")
        runs.append(i)

    sent = [work.send_with_options(args=(i,), partition_key="k") for i in range(4)]
    start_worker()
    broker.join("q", timeout=10_000)

    assert runs == [0, 2, 3]
    [dead] = broker.dead_letters("q")
    assert dead.reason == "max_retries"
    assert dead.attempts == 3
    assert "ValueError: poison 1" in dead.error
    assert "poison 1" in dead.traceback
    assert dead.partition == partition_for("k", 16)
    assert dead.stream_id == sent[1].options["stream_id"]
    assert dead.message is not None and dead.message.message_id == sent[1].message_id


def test_located_messages_are_found_pending_then_dead_lettered_and_forgotten_with_the_ack(
    broker, start_worker, redis_client
):
    @dramatiq.actor(broker=broker, queue_name="q", throws=(ValueError,))
    def work(i: int) -> None:
        if i == 1:
            raise ValueError("poison")

    sent = [
        work.send_with_options(args=(i,), partition_key="k", sequence_key="k", locate=True) for i in range(3)
    ]
    partition = partition_for("k", 16)
    found = [broker.locate("q", partition, m.message_id) for m in sent]
    assert [(m.args, m.options["seq"]) for m in found if m is not None] == [((0,), 1), ((1,), 2), ((2,), 3)]
    # where a message is, not a copy of it: one small field each, and no expiry
    where = broker.keys("q", partition).where
    assert redis_client.hlen(where) == 3 and redis_client.pttl(where) == -1
    assert int(redis_client.memory_usage(where)) < 3 * 80

    start_worker()
    broker.join("q", timeout=10_000)

    assert broker.locate("q", partition, sent[0].message_id) is None
    assert broker.locate("q", partition, sent[2].message_id) is None
    dead = broker.locate("q", partition, sent[1].message_id)
    assert dead is not None and dead.args == (1,) and dead.options["seq"] == 2
    assert redis_client.hlen(where) == 1
    [dead_letter] = broker.dead_letters("q")
    broker.discard_dead_letter("q", partition, dead_letter.dead_letter_id)
    assert redis_client.hlen(where) == 0


def test_attempt_count_is_durable_across_broker_restarts(make_broker, redis_url):
    first = make_broker()
    calls: list[int] = []

    def declare(target: RedisStreamsBroker) -> Any:
        @dramatiq.actor(broker=target, queue_name="q", max_retries=3, min_backoff=10, max_backoff=10)
        def work() -> None:
            calls.append(1)
            raise RuntimeError("always")

        return work

    declare(first).send_with_options(partition_key="k")
    worker = Worker(first, worker_threads=1, worker_timeout=100)
    worker.start()
    wait_for(lambda: len(calls) >= 2, timeout=10)
    worker.stop()
    first.close()
    before = len(calls)

    second = make_broker()
    declare(second)
    worker = Worker(second, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        second.join("q", timeout=10_000)
    finally:
        worker.stop()
    # 1 try + 3 retries in all, whichever process made them.
    assert len(calls) == 4 and before >= 2
    [dead] = second.dead_letters("q")
    assert dead.attempts == 4


def test_throws_dead_letters_at_once_without_retrying(broker, start_worker):
    calls: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", throws=(KeyError,), max_retries=5)
    def work() -> None:
        calls.append(1)
        raise KeyError("nope")

    work.send()
    start_worker()
    broker.join("q", timeout=10_000)
    assert calls == [1]
    [dead] = broker.dead_letters("q")
    assert dead.reason == "non_retryable"


def test_undecodable_entry_and_unknown_actor_are_dead_lettered_with_their_reason(
    broker, start_worker, redis_client
):
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None:
        ran.append(i)

    keys = broker.keys("q", partition_for("k", 16))
    broker.store.ensure_groups("q", 16)
    redis_client.xadd(keys.stream, {"m": b"{not json", "seq": b""})
    ghost = work.message_with_options(args=(0,), partition_key="k").copy(actor_name="ghost")
    broker.enqueue(ghost)
    work.send_with_options(args=(1,), partition_key="k")
    start_worker()
    broker.join("q", timeout=10_000)

    assert ran == [1]
    reasons = sorted(d.reason for d in broker.dead_letters("q"))
    assert reasons == ["decode_error", "unknown_actor"]


def test_a_hand_out_that_fails_half_way_is_undone_and_its_partition_goes_on(
    broker, start_worker, redis_client, monkeypatch
):
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None:
        ran.append(i)

    partition = partition_for("k", 16)
    broker.store.ensure_groups("q", 16)
    redis_client.xadd(broker.keys("q", partition).stream, {"m": b"{not json", "seq": b""})
    work.send_with_options(args=(1,), partition_key="k")
    calls: list[object] = []
    dead_letter = broker.store.dead_letter

    def connection_drops_the_first_time(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionClosed(redis.ConnectionError("Connection reset by peer"))
        return dead_letter(*args, **kwargs)

    monkeypatch.setattr(broker.store, "dead_letter", connection_drops_the_first_time)
    start_worker()
    broker.join("q", timeout=10_000)

    assert ran == [1] and len(calls) == 2
    assert [d.reason for d in broker.dead_letters("q")] == ["decode_error"]
    held = REGISTRY.get_sample_value("stream_partition_lookahead", {"partition": str(partition)})
    wait_for(
        lambda: REGISTRY.get_sample_value("stream_partition_lookahead", {"partition": str(partition)}) == 0
    )
    assert held is not None


def test_entries_a_read_delivered_whose_reply_was_lost_still_run_in_order(broker, start_worker, monkeypatch):
    slow, fast = two_keys_of_one_partition()
    seen: dict[str, list[int]] = defaultdict(list)

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(key: str, i: int) -> None:
        if key == slow:
            time.sleep(1.5)  # keeps the partition busy when the reply is lost
        seen[key].append(i)

    work.send_with_options(args=(slow, 0), partition_key=slow)
    fetch = broker.store.fetch
    lost: list[int] = []

    def reply_lost_once(queue_name: str, claims: Any, reads: Any) -> Any:
        claimed, read = fetch(queue_name, claims, reads)
        if not lost and any(reply.entries and reply.entries[0].key == fast for reply in read.values()):
            lost.append(1)  # Redis delivered the entries; the reply never arrived
            raise ConnectionClosed(redis.ConnectionError("Connection reset by peer"))
        return claimed, read

    monkeypatch.setattr(broker.store, "fetch", reply_lost_once)
    start_worker()
    wait_for(lambda: broker.partition_stats("q")[partition_for(slow, 16)].pending == 1, timeout=5)
    for i in range(5):
        work.send_with_options(args=(fast, i), partition_key=fast)
    broker.join("q", timeout=15_000)

    assert lost and seen == {slow: [0], fast: list(range(5))}


def test_transient_exceptions_pause_the_partition_without_using_the_retry_budget(broker, start_worker):
    calls: list[int] = []

    class DatabaseDown(Exception):
        pass

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=1, transient_exceptions=(DatabaseDown,))
    def work(i: int) -> None:
        calls.append(i)
        if len(calls) <= 5:
            raise DatabaseDown()

    work.send_with_options(args=(0,), partition_key="k")
    work.send_with_options(args=(1,), partition_key="k")
    start_worker()
    broker.join("q", timeout=20_000)
    assert calls == [0, 0, 0, 0, 0, 0, 1]
    assert broker.dead_letters("q") == []


def test_idempotency_key_returns_the_original_message_and_adds_nothing(broker):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(x: int) -> None: ...

    first = work.send_with_options(args=(1,), partition_key="c", idempotency_key="k1", sequence_key="c")
    again = work.send_with_options(args=(2,), partition_key="c", idempotency_key="k1", sequence_key="c")

    assert again.message_id == first.message_id
    assert again.args == ()  # the record keeps no arguments
    assert again.options["seq"] == first.options["seq"] == 1
    assert again.options["idempotent_hit"] is True
    assert "idempotent_hit" not in first.options
    assert sum(s.length for s in broker.partition_stats("q")) == 1


def test_dedup_and_sequence_are_atomic_under_concurrent_enqueues(broker):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(x: int) -> None: ...

    results: list[Any] = []
    lock = threading.Lock()

    def send(thread: int) -> None:
        for i in range(50):
            # every key is sent by 4 threads at once; half the keys are shared
            key = f"k{i}" if i % 2 == 0 else f"k{thread}-{i}"
            message = work.send_with_options(
                args=(i,), partition_key="conv", idempotency_key=key, sequence_key="conv"
            )
            with lock:
                results.append((key, message.message_id, message.options["seq"]))

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    by_key: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for key, message_id, seq in results:
        by_key[key].add((message_id, seq))
    assert all(len(answers) == 1 for answers in by_key.values())
    seqs = sorted(seq for answers in by_key.values() for _, seq in answers)
    assert seqs == list(range(1, len(by_key) + 1))  # strictly increasing, no gaps
    assert sum(s.length for s in broker.partition_stats("q")) == len(by_key) == 25 + 4 * 25


def test_sequence_floor_seeds_a_missing_counter(make_broker):
    asked: list[str] = []

    def floor(key: str) -> int:
        asked.append(key)
        return 41

    broker = make_broker(sequence_floor=floor)

    @dramatiq.actor(broker=broker, queue_name="q")
    def work() -> None: ...

    first = work.send_with_options(partition_key="c", sequence_key="c")
    second = work.send_with_options(partition_key="c", sequence_key="c")
    assert (first.options["seq"], second.options["seq"]) == (42, 43)
    assert asked == ["c"]


def test_delayed_message_enters_its_partition_when_due(broker, start_worker):
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(x: str) -> None:
        ran.append(x)

    work.send_with_options(args=("later",), partition_key="k", delay=700)
    work.send_with_options(args=("now",), partition_key="k")
    assert sum(s.delayed for s in broker.partition_stats("q")) == 1
    start_worker()
    wait_for(lambda: ran == ["now"], timeout=5)
    assert ran == ["now"]
    broker.join("q", timeout=10_000)
    assert ran == ["now", "later"]


def test_batch_actor_gets_consecutive_messages_acked_together(broker, start_worker):
    batches: list[list[int]] = []

    @dramatiq.actor(broker=broker, queue_name="q", batch_size=5)
    def work(messages: list[dramatiq.Message]) -> None:
        batches.append([m.args[0] for m in messages])

    for i in range(12):
        work.send_with_options(args=(i,), partition_key="k", sequence_key="k")
    start_worker()
    broker.join("q", timeout=10_000)

    assert [i for batch in batches for i in batch] == list(range(12))
    assert max(len(b) for b in batches) == 5


def test_failing_batch_is_split_so_only_the_poison_entry_is_dead_lettered(broker, start_worker):
    persisted: list[int] = []

    @dramatiq.actor(
        broker=broker, queue_name="q", batch_size=8, max_retries=1, min_backoff=10, max_backoff=10
    )
    def work(messages: list[dramatiq.Message]) -> None:
        values = [m.args[0] for m in messages]
        if 5 in values:
            raise ValueError("poison 5")
        persisted.extend(values)

    for i in range(16):
        work.send_with_options(args=(i,), partition_key="k")
    start_worker()
    broker.join("q", timeout=20_000)

    assert persisted == [i for i in range(16) if i != 5]
    [dead] = broker.dead_letters("q")
    assert dead.message is not None and dead.message.args == (5,)


def test_acks_sent_ahead_of_a_blocking_wait_are_written_before_it_waits(broker, redis_client):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None: ...

    first = work.send_with_options(args=(1,), partition_key="k", locate=True)
    partition = first.options["partition"]
    store = broker.store
    store.ensure_groups("q", 16)
    redis_client.set(broker.keys("q", partition).lease, broker.consumer_name)
    _, got = store.fetch("q", {}, {partition: 10})
    assert [e.stream_id for e in got[partition].entries] == [first.options["stream_id"]]
    assert broker.partition_stats("q")[partition].pending == 1

    acks = {partition: Done(ids=[first.options["stream_id"]], located=[where_field(first.message_id)])}
    answer: dict[str, Any] = {}
    last_id = got[partition].last_id
    waiter = threading.Thread(
        target=lambda: answer.update(woke=store.wait("q", {partition: last_id}, 5000, acks))
    )
    waiter.start()
    # The ack is written while the wait still blocks for a new entry.
    wait_for(lambda: broker.partition_stats("q")[partition].pending == 0, timeout=4)
    assert redis_client.xlen(broker.keys("q", partition).stream) == 0
    assert broker.locate("q", partition, first.message_id) is None
    second = work.send_with_options(args=(2,), partition_key="k")
    waiter.join(timeout=5)
    assert answer["woke"] == {partition}
    _, got = store.fetch("q", {}, {partition: 10})
    assert [e.stream_id for e in got[partition].entries] == [second.options["stream_id"]]


def test_streams_are_empty_after_drain(broker, start_worker, redis_client):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None: ...

    for i in range(200):
        work.send(i)
    start_worker()
    broker.join("q", timeout=10_000)
    assert [redis_client.xlen(broker.keys("q", p).stream) for p in range(16)] == [0] * 16
    assert all(s.pending == 0 and s.undelivered == 0 for s in broker.partition_stats("q"))


def test_requeued_dead_letter_runs_again_with_same_id_options_and_seq(broker, start_worker):
    fixed = threading.Event()
    ran: list[tuple[str, int]] = []

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def work(i: int) -> None:
        if not fixed.is_set():
            raise RuntimeError("bug")
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        ran.append((message.message_id, message.options["seq"]))

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    sent = work.send_with_options(args=(1,), partition_key="k", sequence_key="k")
    start_worker()
    broker.join("q", timeout=10_000)
    [dead] = broker.dead_letters("q")

    fixed.set()
    broker.requeue_dead_letter("q", dead.partition, dead.dead_letter_id)
    broker.join("q", timeout=10_000)

    assert ran == [(sent.message_id, sent.options["seq"])]
    assert broker.dead_letters("q") == []
    with pytest.raises(DeadLetterNotFound):
        broker.requeue_dead_letter("q", dead.partition, dead.dead_letter_id)


def test_discarded_dead_letter_is_gone(broker, start_worker):
    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def work() -> None:
        raise RuntimeError("bug")

    work.send()
    start_worker()
    broker.join("q", timeout=10_000)
    [dead] = broker.dead_letters("q")
    assert broker.discard_dead_letter("q", dead.partition, dead.dead_letter_id) is True
    assert broker.discard_dead_letter("q", dead.partition, dead.dead_letter_id) is False
    assert broker.dead_letters("q") == []


def test_partition_stats_count_pending_and_undelivered_entries(broker):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None: ...

    for i in range(5):
        work.send_with_options(args=(i,), partition_key="k")
    consumer = broker.consume("q", prefetch=1, timeout=1000)
    message = next(consumer)
    assert message is not None
    stat = broker.partition_stats("q")[partition_for("k", 16)]
    assert (stat.pending, stat.undelivered, stat.length) == (5, 0, 5)  # fetched ahead: pending, in order
    consumer.ack(message)  # acks are written by the acker thread, moments later
    stat = wait_for(lambda: (s := broker.partition_stats("q")[partition_for("k", 16)]).length == 4 and s)
    assert (stat.pending, stat.length) == (4, 4)
    assert stat.oldest_age_ms >= 0


def test_stock_retries_middleware_is_replaced_by_in_place_retries(make_broker):
    broker = make_broker(middleware=[Retries(max_retries=7, min_backoff=5)])
    [retries] = [
        m for m in broker.middleware if isinstance(m, Middleware) and "max_retries" in m.actor_options
    ]
    assert isinstance(retries, InPlaceRetries)
    assert (retries.max_retries, retries.min_backoff) == (7, 5)


def test_join_times_out_while_messages_wait_and_flush_drops_them(broker):
    @dramatiq.actor(broker=broker, queue_name="q")
    def work() -> None: ...

    work.send()
    work.send_with_options(delay=60_000)
    with pytest.raises(QueueJoinTimeout):
        broker.join("q", timeout=100)
    broker.flush_all()
    broker.join("q", timeout=100)
    assert broker.get_declared_queues() == {"q"}


def test_enqueue_hooks_fire_around_the_atomic_enqueue(broker):
    events: list[tuple[str, Any]] = []

    class Spy(Middleware):
        def before_enqueue(self, broker, message, delay):
            events.append(("before", message.options.get("seq")))

        def after_enqueue(self, broker, message, delay):
            events.append(("after", message.options.get("seq")))

    broker.add_middleware(Spy())

    @dramatiq.actor(broker=broker, queue_name="q")
    def work() -> None: ...

    work.send_with_options(sequence_key="s")
    assert events == [("before", None), ("after", 1)]


def test_enqueue_against_a_dead_redis_raises_dramatiqs_connection_error(make_broker):
    broker = make_broker(client=redis.Redis(port=1, socket_connect_timeout=0.5))

    @dramatiq.actor(broker=broker, queue_name="q")
    def work() -> None: ...

    with pytest.raises(dramatiq.errors.BrokerConnectionError):
        work.send()


def test_partition_stats_show_the_owner_the_entries_waiting_for_a_retry_and_live_members(
    broker, start_worker
):
    @dramatiq.actor(broker=broker, queue_name="q", max_retries=3)
    def work(i: int) -> None:
        raise dramatiq.Retry(delay=30_000)

    work.send_with_options(args=(1,), partition_key="k")
    start_worker()
    partition = partition_for("k", 16)
    wait_for(lambda: broker.partition_stats("q")[partition].retrying == 1, timeout=10)

    stats = broker.partition_stats("q")
    assert {s.owner for s in stats} == {broker.consumer_name}
    assert sum(s.retrying for s in stats) == 1 and stats[partition].pending == 1
    assert broker.members() == [broker.consumer_name]


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one send is one round trip (a
    pipeline sends all its commands at once)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health=check_health)


def test_an_overview_of_queues_and_members_is_one_round_trip_and_agrees_with_the_parts(
    make_broker: Callable[..., RedisStreamsBroker], redis_url: str
) -> None:
    broker = make_broker(partitions=4)

    @dramatiq.actor(broker=broker, queue_name="a")
    def a(i: int) -> None: ...

    @dramatiq.actor(broker=broker, queue_name="b")
    def b(i: int) -> None: ...

    for i in range(5):
        a.send_with_options(args=(i,), partition_key=f"k{i}")
    b.send_with_options(args=(0,), partition_key="k")
    worker = Worker(broker, worker_threads=1)
    worker.start()
    try:
        wait_for(lambda: broker.members() != [], timeout=10, what="the worker's membership")
        broker.join("a", timeout=10_000)
        broker.join("b", timeout=10_000)
        counted = RedisStreamsBroker(
            client=redis.Redis.from_url(redis_url, connection_class=CountingConnection),
            namespace=broker.namespace,
            partitions=4,
        )
        counted.ping()  # connected (the handshake is several sends of its own)
        CountingConnection.sends = 0
        by_queue, members = counted.overview(["a", "b"])
        assert CountingConnection.sends == 1
        assert members == broker.members()
        assert by_queue == {"a": broker.partition_stats("a"), "b": broker.partition_stats("b")}
        assert sum(s.length for s in by_queue["a"]) == 0 and {s.owner for s in by_queue["a"]} == set(members)
        counted.close()
    finally:
        worker.stop()
