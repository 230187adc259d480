"""Dead-letter streams for an application that keeps dead letters elsewhere: an exact trim,
the backlog it leaves, and requeues of many dead letters from stored messages."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import dramatiq
import pytest
from dramatiq import Worker

from brokers import RedisStreamsBroker

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def broker(make_broker: Callable[..., RedisStreamsBroker]) -> RedisStreamsBroker:
    return make_broker(partitions=2)


@pytest.fixture
def start_worker(broker: RedisStreamsBroker) -> Iterator[Callable[[], Worker]]:
    workers: list[Worker] = []

    def start() -> Worker:
        worker = Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def test_trimming_up_to_an_entry_removes_exactly_that_far_and_the_backlog_shows_the_rest(
    broker, start_worker
):
    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def work(i: int) -> None:
        raise RuntimeError("bug")

    for i in range(250):  # more than a stream node holds (100): an approximate trim keeps some
        work.send_with_options(args=(i,), partition_key="one key")
    start_worker()
    broker.join("q", timeout=30_000)
    dead = broker.dead_letters("q")
    partition = dead[0].partition
    assert len(dead) == 250

    assert broker.trim_dead_letters("q", partition, dead[149].dead_letter_id) == 150

    assert [d.dead_letter_id for d in broker.dead_letters("q")] == [d.dead_letter_id for d in dead[150:]]
    backlog = {b.partition: b for b in broker.dead_letter_backlog("q")}
    assert backlog[partition].length == 100 and backlog[partition].oldest_age_ms >= 0
    assert backlog[1 - partition].length == 0 and backlog[1 - partition].oldest_age_ms == 0


def test_many_trimmed_dead_letters_are_requeued_in_one_call_with_their_seq_and_a_repeat_adds_nothing(
    broker, start_worker
):
    fixed = threading.Event()
    ran: list[tuple[str, int]] = []

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def work(i: int) -> None:
        if not fixed.is_set():
            raise RuntimeError("bug")
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        ran.append((message.message_id, message.options["seq"]))

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    sent = [
        work.send_with_options(args=(i,), partition_key=f"k{i % 3}", sequence_key=f"k{i % 3}", locate=True)
        for i in range(12)
    ]
    start_worker()
    broker.join("q", timeout=10_000)
    dead = broker.dead_letters("q")
    for partition in {d.partition for d in dead}:  # the application stored them: trimmed
        last = max((d for d in dead if d.partition == partition), key=_id)
        broker.trim_dead_letters("q", partition, last.dead_letter_id)
    assert broker.dead_letters("q") == []

    fixed.set()
    stored = [(d.partition, d.dead_letter_id, d.message, d.seq) for d in dead]
    first = broker.requeue_dead_letters("q", stored)
    again = broker.requeue_dead_letters("q", stored)  # a lost reply, a redrive run twice
    broker.join("q", timeout=10_000)

    assert again == first
    assert sorted(ran) == sorted((m.message_id, m.options["seq"]) for m in sent)


def _id(dead_letter) -> tuple[int, int]:
    ms, _, seq = dead_letter.dead_letter_id.partition("-")
    return int(ms), int(seq)
