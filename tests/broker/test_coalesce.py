"""Group commit of concurrent Redis calls (the logic, on a recording runner)."""

from __future__ import annotations

import threading
import time
from typing import Any

from brokers.coalesce import Call, Coalescer


def test_concurrent_calls_share_round_trips_and_each_gets_its_own_answer() -> None:
    rounds: list[int] = []

    def run(calls: list[Call]) -> list[Any]:
        rounds.append(len(calls))
        time.sleep(0.005)  # a round trip's latency, so callers pile up behind it
        return [ValueError(args[0]) if args[0] % 7 == 0 else args[0] * 2 for _, _, args in calls]

    coalescer = Coalescer(run)
    answers: dict[int, Any] = {}

    def caller(i: int) -> None:
        try:
            answers[i] = coalescer.call((None, [], [i]))
        except ValueError as error:
            answers[i] = f"error {error}"

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(1, 101)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert answers == {i: (f"error {i}" if i % 7 == 0 else i * 2) for i in range(1, 101)}
    assert sum(rounds) == 100
    assert len(rounds) < 50  # calls were grouped


def test_a_lone_caller_makes_one_round_trip_per_call() -> None:
    rounds: list[int] = []
    coalescer = Coalescer(lambda calls: rounds.append(len(calls)) or [None] * len(calls))
    for i in range(5):
        coalescer.call((None, [], [i]))
    assert rounds == [1, 1, 1, 1, 1]


def test_a_failed_round_trip_fails_every_caller_in_it() -> None:
    def run(calls: list[Call]) -> list[Any]:
        raise ConnectionError("redis gone")

    coalescer = Coalescer(run)
    errors: list[str] = []

    def caller() -> None:
        try:
            coalescer.call((None, [], []))
        except ConnectionError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["redis gone"] * 10
