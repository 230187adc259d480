"""The per-key gate of a partition, without Redis: what may run, in which order, and how
every outcome (success, retry, split, undo, lost lease) leaves the partition."""

from __future__ import annotations

from collections import defaultdict

import dramatiq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.partition import PartitionState
from brokers.records import StreamEntry, stream_order


def entry(n: int, key: str, *, actor: str = "work", **fields: object) -> StreamEntry:
    stream_id = f"{1000 + n}-0"
    message = dramatiq.Message(queue_name="q", actor_name=actor, args=(n,), kwargs={}, options={})
    made = StreamEntry(stream_id, b"", n, key, stream_order(stream_id), message=message)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def single(_: StreamEntry) -> None:
    return None


def batches_of(size: int):
    return lambda _: size


def state(*, per_key: bool = True, lookahead: int = 100) -> PartitionState:
    return PartitionState(0, valid_until=1e9, lookahead=lookahead, per_key=per_key)


def test_keys_run_side_by_side_but_one_batch_per_key_at_a_time():
    p = state()
    p.add([entry(1, "a"), entry(2, "a"), entry(3, "b")], now=0)

    first, second = p.take(0, single), p.take(0, single)

    assert [e.seq for e in first] == [1] and [e.seq for e in second] == [3]
    assert p.take(0, single) is None  # a's next waits for a's first
    p.finished(first)
    assert [e.seq for e in p.take(0, single)] == [2]


def test_a_key_backing_off_holds_up_only_itself():
    p = state()
    p.add([entry(1, "a"), entry(2, "a"), entry(3, "b"), entry(4, "b")], now=0)
    failed = p.take(0, single)
    p.retry_later(failed, now=0, delay_s=5, transient=False)

    ran = []
    while (batch := p.take(1, single)) is not None:
        ran += [e.seq for e in batch]
        p.finished(batch)

    assert ran == [3, 4]
    assert p.blocked_keys() == 1 and p.next_wake() == 5
    assert [e.seq for e in p.take(5, single)] == [1]


def test_partition_ordering_is_one_key_for_the_whole_partition():
    p = state(per_key=False)
    p.add([entry(1, "a"), entry(2, "b")], now=0)
    first = p.take(0, single)
    assert p.take(0, single) is None
    p.retry_later(first, now=0, delay_s=1, transient=True)
    assert p.take(0.5, single) is None
    assert [e.seq for e in p.take(1, single)] == [1]


def test_a_batch_takes_a_keys_next_entries_then_other_keys_of_the_same_actor():
    p = state()
    p.add([entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "c", actor="other"), entry(5, "d")], now=0)

    batch = p.take(0, batches_of(10))

    assert [(e.key, e.seq) for e in batch] == [("a", 1), ("a", 3), ("b", 2), ("d", 5)]
    assert [e.seq for e in p.take(0, batches_of(10))] == [4]


def test_a_failed_batch_runs_again_entry_by_entry():
    p = state()
    p.add([entry(i, f"k{i % 2}") for i in range(4)], now=0)
    batch = p.take(0, batches_of(10))
    assert len(batch) == 4

    p.isolate(batch)
    alone = [p.take(0, batches_of(10)), p.take(0, batches_of(10))]

    assert [[e.seq for e in b] for b in alone] == [[0], [1]]


def test_an_undone_hand_out_leaves_the_partition_as_it_was():
    """Defect 1 of the restructuring: a hand-out that fails half-way (Redis unreachable
    while dead-lettering or recording a start) must not leave its key busy forever."""
    p = state()
    p.add([entry(1, "a"), entry(2, "a")], now=0)
    taken = p.take(0, single)

    p.put_back(taken)

    assert p.in_flight == 0 and p.held == 2
    assert [e.seq for e in p.take(0, single)] == [1]


def test_settling_part_of_a_batch_keeps_the_rest_at_the_head_of_its_key():
    p = state()
    p.add([entry(1, "a"), entry(2, "a"), entry(3, "b")], now=0)
    batch = p.take(0, batches_of(10))

    p.settle(done=[batch[0]], back=batch[1:])

    assert p.held == 2 and p.in_flight == 0
    assert [e.seq for e in p.take(0, batches_of(10))] == [2, 3]


def test_lookahead_counts_what_is_held_waiting_or_in_flight():
    p = state(lookahead=3)
    p.add([entry(1, "a"), entry(2, "a")], now=0)
    batch = p.take(0, single)
    assert p.room() == 1
    p.finished(batch)
    assert p.room() == 2


def test_a_lost_lease_forgets_what_waits_and_lets_what_runs_finish():
    p = state()
    p.add([entry(1, "a"), entry(2, "b"), entry(3, "b")], now=0)
    running = p.take(0, single)

    dropped = p.forget_waiting()

    assert sorted(e.seq for e in dropped) == [2, 3]
    assert p.take(0, single) is None
    p.finished(running)
    assert p.held == 0 and p.in_flight == 0


def test_a_claimed_entry_still_backing_off_waits_for_its_retry_time():
    p = state()
    p.add([entry(1, "a", retry_in_ms=2000), entry(2, "a"), entry(3, "b")], now=10)
    assert [e.seq for e in p.take(10, single)] == [3]
    assert p.take(11, single) is None
    assert [e.seq for e in p.take(12, single)] == [1]


def test_an_entry_whose_earlier_runs_never_finished_needs_the_lone_slot_and_runs_alone():
    p = state()
    p.add([entry(1, "a", starts=2, suspect=True), entry(2, "b"), entry(3, "c")], now=0)

    assert [e.seq for e in p.take(0, batches_of(10), lone_free=False)] == [2, 3]
    assert [e.seq for e in p.take(0, batches_of(10), lone_free=True)] == [1]


@pytest.mark.parametrize("outcome", ["finished", "retry", "isolate", "put_back"])
def test_every_outcome_frees_the_key_for_its_next_entry_in_order(outcome):
    p = state()
    p.add([entry(1, "a"), entry(2, "a")], now=0)
    batch = p.take(0, single)
    if outcome == "finished":
        p.finished(batch)
        expected = 2
    elif outcome == "retry":
        p.retry_later(batch, now=0, delay_s=0, transient=False)
        expected = 1
    elif outcome == "isolate":
        p.isolate(batch)
        expected = 1
    else:
        p.put_back(batch)
        expected = 1
    assert [e.seq for e in p.take(0, single)] == [expected]


# -- a model check: random traffic and outcomes never break the gate's rules -------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "take", "take", "finish", "retry", "isolate", "put_back", "tick", "lose"]),
        st.integers(min_value=0, max_value=5),
        st.lists(st.sampled_from(["k0", "k1", "k2"]), min_size=1, max_size=4),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(operations, st.booleans(), st.integers(min_value=1, max_value=4))
def test_random_traffic_keeps_one_batch_per_key_in_stream_order(ops, per_key, batch_size):
    p = state(per_key=per_key, lookahead=1000)
    now = 0.0
    sent = 0
    in_flight: list[list[StreamEntry]] = []
    done: set[int] = set()
    by_key: dict[str, list[int]] = defaultdict(list)
    for op, arg, keys in ops:
        if op == "add":
            fresh = [entry(sent + i, key) for i, key in enumerate(keys)]
            sent += len(fresh)
            for e in fresh:
                by_key[e.key if per_key else ""].append(e.seq)
            p.add(fresh, now)
        elif op == "take":
            batch = p.take(now, batches_of(batch_size) if arg % 2 else single)
            if batch is None:
                continue
            keys = {e.key if per_key else "" for e in batch}
            busy = {e.key if per_key else "" for b in in_flight for e in b}
            assert not keys & busy, "two batches of one key in flight"
            for e in batch:
                gate = e.key if per_key else ""
                earlier = [s for s in by_key[gate] if s < e.seq]
                assert all(s in done or s in {x.seq for x in batch} for s in earlier), "out of order"
            in_flight.append(batch)
        elif op in {"finish", "retry", "isolate", "put_back"} and in_flight:
            batch = in_flight.pop(arg % len(in_flight))
            if op == "finish":
                p.finished(batch)
                done.update(e.seq for e in batch)
            elif op == "retry":
                p.retry_later(batch, now, delay_s=arg, transient=bool(arg % 2))
            elif op == "isolate":
                p.isolate(batch)
            else:
                p.put_back(batch)
        elif op == "tick":
            now += arg
        elif op == "lose":
            for e in p.forget_waiting():
                gate = e.key if per_key else ""
                by_key[gate].remove(e.seq)
        assert p.in_flight == len(in_flight)
        assert p.held == sum(len(b) for b in in_flight) + len(list(p.waiting()))
        assert p.running == sum(len(b) for b in in_flight)
