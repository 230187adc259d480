"""The consumer's decision when it has nothing to hand out: claim, read, block or wait.

A pure function of what the consumer knows (no Redis, no clock of its own), so every
case is unit-tested. The consumer runs the plan and asks again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionView:
    """What the scheduler needs to know of one leased partition."""

    partition: int
    #: Earlier owners' pending entries are still to be claimed (and this one may claim:
    #: lease valid, room in memory, its own deferred acks written).
    claimable: bool
    #: Caught up, lease valid and room in memory: new entries may be read.
    readable: bool
    #: When to claim or read again (monotonic seconds; 0: at once).
    next_read_at: float
    #: When its earliest blocked key may run again, if one is blocked.
    next_wake: float | None = None
    #: When its earliest delayed message is due, if one is delayed.
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """One step: claim and read now (one round trip), or block, or sleep."""

    claim: tuple[int, ...] = ()
    read: tuple[int, ...] = ()
    #: Partitions to wait on with a blocking read, and for how long.
    block: tuple[int, ...] = ()
    block_ms: int = 0
    #: Seconds to wait for a wake-up (a finished message, a new lease) when nothing else.
    sleep_s: float = 0.0


def plan(
    views: list[PartitionView],
    *,
    now: float,
    deadline: float,
    busy: bool,
    can_block: bool,
    poll_interval_s: float,
) -> Plan:
    """What to do next.

    * Claims and reads that are due go together in one round trip.
    * Otherwise, when nothing is in flight and Redis can block on several streams at
      once, wait on every readable partition with one blocking read, at most until the
      next retry or delayed message is due, the caller's deadline, or
      ``poll_interval_s``. (While messages are in flight the consumer must stay free to
      hand out what they unblock, so it polls instead.)
    * Else sleep until the next due read, retry or delayed message, or the deadline.
    """
    claim = tuple(v.partition for v in views if v.claimable and v.next_read_at <= now)
    read = tuple(v.partition for v in views if v.readable and v.next_read_at <= now)
    if claim or read:
        return Plan(claim=claim, read=read)
    timers = [deadline]
    timers += [v.next_wake for v in views if v.next_wake is not None]
    timers += [v.next_due for v in views if v.next_due is not None]
    readable = tuple(v.partition for v in views if v.readable)
    if not busy and can_block and readable:
        until = min([*timers, now + poll_interval_s])
        return Plan(block=readable, block_ms=max(1, math.ceil(round((until - now) * 1000, 6))))
    timers += [v.next_read_at for v in views if v.readable or v.claimable]
    return Plan(sleep_s=max(0.0005, min(timers) - now))
