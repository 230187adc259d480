"""``runworkers``' restart policy: a crash loop backs off, a healthy child starts over."""

from __future__ import annotations

from delivery.management.commands.runworkers import RestartBackoff


def test_a_child_that_keeps_crashing_on_start_waits_twice_as_long_each_time_up_to_a_cap() -> None:
    backoff = RestartBackoff(first_s=0.5, max_s=4.0, healthy_after_s=60.0)
    assert [backoff.delay_s(0, ran_s=0.2) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_that_ran_healthy_for_a_while_is_restarted_quickly_again() -> None:
    backoff = RestartBackoff(first_s=0.5, max_s=30.0, healthy_after_s=60.0)
    for _ in range(4):  # 0.5, 1, 2, 4
        backoff.delay_s(0, ran_s=1.0)
    assert backoff.delay_s(0, ran_s=59.0) == 8.0  # not healthy long enough: still backing off
    assert backoff.delay_s(0, ran_s=60.0) == 0.5
    assert backoff.delay_s(0, ran_s=0.1) == 1.0  # and a new crash loop backs off from there


def test_each_child_has_its_own_backoff() -> None:
    backoff = RestartBackoff(first_s=0.5, max_s=30.0, healthy_after_s=60.0)
    backoff.delay_s(0, ran_s=0.1)
    backoff.delay_s(0, ran_s=0.1)
    assert backoff.delay_s(1, ran_s=0.1) == 0.5
