"""A service that stopped answering, as one process sees it: fail fast, probe once in a while.

A partition (or a hung server) costs every call a full timeout. A sync API server has a
few worker processes; if each request waited out its own timeout they would all be busy
waiting, and the requests queued behind them would wait longer than any timeout. So once
a call to a service timed out, calls in this process fail at once for
:data:`FAIL_FAST_S`; then one call at a time goes through to probe (the others keep
failing fast while it runs), and the first answer ends the outage. Only calls that got
no answer open an outage: a refused connection fails fast on its own.

Pure Python (no Django, no Redis): the Redis client (``delivery.broker``) and the
database backend (``messaging_project.postgresql``) each keep one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: How long calls fail at once after one got no answer, in seconds. It matches the
#: ``Retry-After`` of the 503 that clients get meanwhile.
FAIL_FAST_S = 1.0


class Outage:
    """The state of one service in this process: answering, or silent since a timeout."""

    def __init__(
        self,
        name: str,
        *,
        probe_s: float,
        fail_fast_s: float = FAIL_FAST_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: The service, for messages ("Redis", "the database").
        self.name = name
        self.clock = clock
        #: The longest one call can take (its own timeouts): how long others wait for a probe.
        self.probe_s = probe_s
        self.fail_fast_s = fail_fast_s
        self._lock = threading.Lock()
        #: Calls fail fast until then (monotonic seconds); 0: the service answers.
        self._silent_until = 0.0
        #: The thread whose call probes the service (its nested calls go ahead too).
        self._prober: int | None = None

    def check(self) -> str | None:
        """Why a call must not be made now (the service is silent), or None to go ahead.

        When the fail-fast period is over, the first caller goes ahead as the probe (with
        whatever its call does on the way: connect, a health check) and the others keep
        failing for as long as a probe can take."""
        if not self._silent_until:
            return None
        with self._lock:
            now = self.clock()
            if not self._silent_until or self._prober == threading.get_ident():
                return None
            if now < self._silent_until:
                wait_s = self._silent_until - now
                return f"{self.name} did not answer recently; not asking again for {wait_s:.1f} s"
            self._silent_until = now + self.probe_s
            self._prober = threading.get_ident()
            return None

    def timed_out(self) -> None:
        """A call got no answer in time: fail fast from now on."""
        with self._lock:
            self._silent_until = self.clock() + self.fail_fast_s
            self._prober = None

    def answered(self) -> None:
        """A call got an answer: the service is back."""
        if self._silent_until:
            with self._lock:
                self._silent_until = 0.0
                self._prober = None

    @property
    def silent(self) -> bool:
        """Whether calls fail fast now."""
        return self.clock() < self._silent_until
