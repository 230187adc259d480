"""Group commit for Redis calls: concurrent callers share round trips.

Each caller still returns only after Redis answered *its* call, so nothing is
acknowledged earlier than before; what changes is that calls arriving while a round
trip is under way go together in the next one (one pipeline), instead of each paying
a round trip of its own. A single caller sees one call per round trip, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: A call: (script, keys, args), as ``RedisStreamsBroker.run_scripts`` takes them.
Call = tuple[Any, list[str], list[Any]]


class _Pending:
    __slots__ = ("call", "done", "error", "lead", "value")

    def __init__(self, call: Call) -> None:
        self.call = call
        #: Set for callers that wait (a lone caller leads at once and needs none).
        self.done: threading.Event | None = None
        self.lead = False
        self.value: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Coalescer:
    """Runs calls from many threads in shared round trips (leader/follower)."""

    def __init__(self, run: Callable[[list[Call]], list[Any]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def call(self, call: Call) -> Any:
        """Run ``call`` (with whatever else is waiting) and return its result."""
        mine = _Pending(call)
        with self._lock:
            follow = self._busy
            if follow:
                mine.done = threading.Event()
            self._queue.append(mine)
            self._busy = True
        if mine.done is not None:
            mine.done.wait()
            if not mine.lead:
                return mine.outcome()
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            results = self._run([p.call for p in batch])
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    pending.error = result
                else:
                    pending.value = result
        except BaseException as error:  # every caller of the round trip gets the error
            for pending in batch:
                pending.error = error
        for pending in batch:
            if pending.done is not None and pending is not mine:
                pending.done.set()
        with self._lock:
            if self._queue:  # hand the next round to the first caller waiting
                nxt = self._queue[0]
                nxt.lead = True
                assert nxt.done is not None  # it queued while this round was busy
                nxt.done.set()
            else:
                self._busy = False
        return mine.outcome()
