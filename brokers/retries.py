"""Retries in place: the stream broker's replacement for Dramatiq's ``Retries``.

Dramatiq's stock middleware retries by enqueueing a *copy* at the tail of the queue and
acking the original, which lets later messages of the same partition overtake the failed
one. This middleware makes the same decision (same options, same backoff) but only
records it on the message; the consumer then keeps the entry pending at the head of its
partition and redelivers it after the backoff, or dead-letters it.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from dramatiq.common import compute_backoff
from dramatiq.errors import Retry
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF

from brokers.proxy import StreamMessageProxy
from brokers.records import REASON_MAX_RETRIES, REASON_THROWS

if TYPE_CHECKING:
    from dramatiq.broker import Broker, MessageProxy

#: Default number of retries after the first failure (Dramatiq's default).
DEFAULT_MAX_RETRIES = 20

#: Runs that never finish (their process died) allowed beyond ``max_retries``, by default.
EXTRA_DELIVERIES = 2

#: First pause, in milliseconds, after a transient error (see ``transient_exceptions``).
DEFAULT_TRANSIENT_MIN_BACKOFF_MS = 100

#: Longest pause, in milliseconds, between two tries after transient errors.
DEFAULT_TRANSIENT_MAX_BACKOFF_MS = 5000

#: Most characters of a traceback kept with a dead letter.
TRACEBACK_LIMIT_CHARS = 8000


class InPlaceRetries(Middleware):
    """Decides what happens to a failed message of a :class:`RedisStreamsBroker`.

    Actor options (in addition to Dramatiq's ``max_retries``, ``min_backoff``,
    ``max_backoff``, ``retry_when``, ``throws`` and ``on_retry_exhausted``):

    * ``transient_exceptions``: exception classes that mean "try again later" (a database
      outage): the partition pauses with capped backoff and the retry budget is not used.
    * ``batch_size``: the actor takes a list of up to this many messages of one partition
      (see :class:`brokers.RedisStreamsBroker`).
    * ``max_deliveries``: runs that never finish (the process running the message died:
      OOM killer, segfault) before the message is dead-lettered with reason
      ``crashed_worker``; default ``max_retries + 2``.
    """

    def __init__(
        self,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        min_backoff: int | None = None,
        max_backoff: int | None = None,
        retry_when: Any = None,
        transient_min_backoff: int = DEFAULT_TRANSIENT_MIN_BACKOFF_MS,
        transient_max_backoff: int = DEFAULT_TRANSIENT_MAX_BACKOFF_MS,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.max_retries = max_retries
        self.min_backoff = min_backoff or DEFAULT_MIN_BACKOFF
        self.max_backoff = max_backoff or DEFAULT_MAX_BACKOFF
        self.retry_when = retry_when
        self.transient_min_backoff = transient_min_backoff
        self.transient_max_backoff = transient_max_backoff

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "retry_when",
            "throws",
            "on_retry_exhausted",
            "transient_exceptions",
            "batch_size",
            "max_deliveries",
        }

    def max_deliveries(self, actor_options: dict[str, Any]) -> int:
        """How many runs that never finish an actor allows before ``crashed_worker``."""
        explicit = actor_options.get("max_deliveries")
        if explicit is not None:
            return max(1, int(explicit))
        max_retries = actor_options.get("max_retries", self.max_retries)
        return (DEFAULT_MAX_RETRIES if max_retries is None else int(max_retries)) + EXTRA_DELIVERIES

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not isinstance(message, StreamMessageProxy):
            return
        actor = broker.get_actor(message.actor_name)
        option = message.options.get
        message.error = f"{type(exception).__name__}: {exception}"
        message.traceback = traceback.format_exc(limit=30)[-TRACEBACK_LIMIT_CHARS:]

        transient = option("transient_exceptions") or actor.options.get("transient_exceptions")
        if transient and isinstance(exception, transient):
            _, delay = compute_backoff(
                message.transient_failures,
                factor=self.transient_min_backoff,
                max_backoff=self.transient_max_backoff,
                jitter=False,
            )
            self.logger.warning(
                "Transient failure of %s (%s); its partition pauses for %d ms.", message, exception, delay
            )
            message.retry_in_place(delay_ms=delay, count_attempt=False)
            return

        if len(message.entries) > 1:
            # A failing batch is split until the failing entry stands alone; only that one
            # uses its retry budget, so the entries before it succeed in order.
            message.split_batch()
            return

        throws = option("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            message.fail_with(REASON_THROWS)
            return

        retries = message.attempts
        max_retries = option("max_retries", actor.options.get("max_retries", self.max_retries))
        retry_when = actor.options.get("retry_when", self.retry_when)
        if (retry_when is not None and not retry_when(retries, exception)) or (
            retry_when is None and max_retries is not None and retries >= max_retries
        ):
            self.logger.warning("Retries exceeded for message %r.", message.message_id)
            message.fail_with(REASON_MAX_RETRIES)
            target_actor_name = option("on_retry_exhausted") or actor.options.get("on_retry_exhausted")
            if target_actor_name:
                broker.get_actor(target_actor_name).send(
                    message.asdict(), {"retries": retries, "max_retries": max_retries}
                )
            return

        if isinstance(exception, Retry) and exception.delay is not None:
            delay = exception.delay
        else:
            min_backoff = option("min_backoff", actor.options.get("min_backoff", self.min_backoff))
            max_backoff = option("max_backoff", actor.options.get("max_backoff", self.max_backoff))
            _, delay = compute_backoff(
                retries, factor=min_backoff, max_backoff=min(max_backoff, DEFAULT_MAX_BACKOFF)
            )
        self.logger.info("Retrying message %r in place in %d ms.", message.message_id, delay)
        message.retry_in_place(delay_ms=delay, count_attempt=True)
