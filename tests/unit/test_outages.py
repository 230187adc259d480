"""``messaging_project.outages.Outage``: after a call got no answer, calls fail fast, one probes."""

from __future__ import annotations

import threading

from messaging_project.outages import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _in_thread(outage: Outage) -> str | None:
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(outage.check()))
    thread.start()
    thread.join()
    return result[0]


def test_calls_go_ahead_while_the_service_answers() -> None:
    outage = Outage("Redis", probe_s=2.0, clock=Clock())
    assert outage.check() is None and not outage.silent


def test_after_a_timeout_calls_fail_fast_until_the_fail_fast_period_ends() -> None:
    clock = Clock()
    outage = Outage("Redis", probe_s=2.0, fail_fast_s=1.0, clock=clock)
    outage.timed_out()
    reason = outage.check()
    assert reason is not None and reason.startswith("Redis did not answer recently")
    clock.now += 0.99
    assert outage.check() is not None and outage.silent


def test_then_one_caller_probes_with_its_nested_calls_and_the_others_keep_failing() -> None:
    clock = Clock()
    outage = Outage("Redis", probe_s=2.0, fail_fast_s=1.0, clock=clock)
    outage.timed_out()
    clock.now += 1.0
    assert outage.check() is None  # this thread probes...
    assert outage.check() is None  # ...connecting, checking health, sending
    assert _in_thread(outage) is not None  # everyone else still fails fast
    clock.now += 1.9
    assert _in_thread(outage) is not None


def test_an_answer_ends_the_outage_for_everyone() -> None:
    clock = Clock()
    outage = Outage("the database", probe_s=2.0, fail_fast_s=1.0, clock=clock)
    outage.timed_out()
    clock.now += 1.0
    assert outage.check() is None
    outage.answered()
    assert _in_thread(outage) is None and not outage.silent


def test_a_probe_that_times_out_starts_another_fail_fast_period() -> None:
    clock = Clock()
    outage = Outage("Redis", probe_s=2.0, fail_fast_s=1.0, clock=clock)
    outage.timed_out()
    clock.now += 1.0
    assert outage.check() is None
    clock.now += 2.0
    outage.timed_out()
    assert outage.check() is not None  # the prober too: the new period applies to all
    clock.now += 1.0
    assert _in_thread(outage) is None  # and a new probe after it


def test_a_probe_that_never_reports_is_replaced_after_the_longest_a_probe_can_take() -> None:
    clock = Clock()
    outage = Outage("Redis", probe_s=2.0, fail_fast_s=1.0, clock=clock)
    outage.timed_out()
    clock.now += 1.0
    assert outage.check() is None  # a probe whose call then fails some other way
    clock.now += 2.0
    assert _in_thread(outage) is None
