"""The consumer's decision when nothing can be handed out, without Redis."""

from __future__ import annotations

from brokers.scheduler import PartitionView, plan


def view(partition: int, **fields: object) -> PartitionView:
    base = {"claimable": False, "readable": True, "next_read_at": 0.0}
    return PartitionView(partition=partition, **{**base, **fields})  # type: ignore[arg-type]


def decide(views, *, now=10.0, deadline=11.0, busy=False, can_block=True, poll_interval_s=5.0):
    return plan(
        views, now=now, deadline=deadline, busy=busy, can_block=can_block, poll_interval_s=poll_interval_s
    )


def test_due_claims_and_reads_go_together_in_one_round_trip():
    step = decide([view(0, claimable=True, readable=False), view(1), view(2, next_read_at=99.0)])
    assert (step.claim, step.read, step.block) == ((0,), (1,), ())


def test_an_idle_consumer_blocks_on_every_readable_partition_until_the_first_timer():
    step = decide(
        [view(0, next_read_at=10.5), view(1, next_read_at=10.5, next_wake=10.2), view(2, readable=False)]
    )
    assert step.block == (0, 1) and step.block_ms == 200


def test_a_blocking_wait_is_bounded_by_the_poll_interval_and_the_deadline():
    assert decide([view(0, next_read_at=99.0)], deadline=60.0, poll_interval_s=2.0).block_ms == 2000
    assert decide([view(0, next_read_at=99.0)], deadline=10.3).block_ms == 300
    assert decide([view(0, next_read_at=99.0, next_due=10.25)]).block_ms == 250


def test_a_busy_consumer_polls_instead_of_blocking():
    step = decide([view(0, next_read_at=10.02)], busy=True)
    assert step.block == () and abs(step.sleep_s - 0.02) < 1e-9


def test_on_a_cluster_it_polls_even_when_idle():
    step = decide([view(0, next_read_at=10.02)], can_block=False)
    assert step.block == () and abs(step.sleep_s - 0.02) < 1e-9


def test_with_nothing_readable_it_sleeps_until_a_key_may_retry():
    step = decide([view(0, readable=False, next_wake=10.4)])
    assert step.block == () and abs(step.sleep_s - 0.4) < 1e-9


def test_a_claim_not_yet_due_sets_the_sleep():
    step = decide([view(0, claimable=True, readable=False, next_read_at=10.1)], busy=True)
    assert abs(step.sleep_s - 0.1) < 1e-9
