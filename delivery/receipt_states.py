"""A message's receipts as the API shows them, from the two places they are kept: pure
rules, no database (unit-tested alone, ``tests/unit/test_receipt_states.py``).

* SENT is implied by the persisted message, for every recipient, at its ``persisted_at``
  (rows written before issue 22 say the same, at the same time).
* A per-(conversation, user) :class:`Watermark`: every message up to ``read_seq`` is read,
  up to ``delivered_seq`` delivered.
* Per-message rows (``MessageReceipt``) that a client reported for one message.

States only move forward (sent → delivered → read) and a later state implies the earlier
ones. A state's time is the earliest that any source gives, never before the message was
persisted (nobody receives a message that is not stored yet) and never after a later
state's time. A watermark keeps only the time it last moved, so the time of a state it
implies is an upper bound: the state was reached then at the latest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

#: The receipt states, in the order a recipient reaches them.
SENT, DELIVERED, READ = "sent", "delivered", "read"
STATES = (SENT, DELIVERED, READ)

_RANK = {state: rank for rank, state in enumerate(STATES)}


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far one user has received and read one conversation."""

    conversation_id: str
    #: Every message up to this ``seq`` is read (0: none).
    read_seq: int
    #: When ``read_seq`` last moved forward; None while it is 0.
    read_at: datetime | None
    #: Every message up to this ``seq`` is delivered (0: none); at least ``read_seq``.
    delivered_seq: int
    #: When ``delivered_seq`` last moved forward; None while it is 0.
    delivered_at: datetime | None

    def implies(self, state: str, seq: int) -> bool:
        """Whether this watermark already puts the message ``seq`` in ``state`` (or past it)."""
        if state == READ:
            return self.read_seq >= seq
        if state == DELIVERED:
            return self.delivered_seq >= seq
        return False


@dataclass(frozen=True, slots=True)
class Receipt:
    """One state one user reached for one message, and when."""

    user: str
    state: str
    timestamp: datetime


def message_receipts(
    *,
    seq: int,
    persisted_at: datetime,
    recipients: Iterable[str],
    rows: Iterable[Receipt],
    watermarks: Mapping[str, Watermark],
) -> list[Receipt]:
    """Every state each user reached for the message ``seq`` of a conversation.

    ``recipients``: the conversation's participants other than the sender (SENT is
    implied for each); ``rows``: the message's per-message receipt rows (a user who left
    the conversation keeps the states their rows record); ``watermarks``: the
    conversation's watermarks by user. Ordered by time, then state, then user.
    """
    reached: dict[str, dict[str, datetime]] = {}

    def reach(user: str, state: str, at: datetime) -> None:
        # Nothing is received before it is stored: a message persisted after a watermark
        # moved past its seq (a dead letter requeued in its original place) is reached at
        # its persistence, not before.
        at = max(at, persisted_at)
        states = reached.setdefault(user, {})
        if state not in states or at < states[state]:
            states[state] = at

    for user in recipients:
        reach(user, SENT, persisted_at)
    for row in rows:
        reach(row.user, row.state, row.timestamp)
    for user, watermark in watermarks.items():
        for state, at in ((DELIVERED, watermark.delivered_at), (READ, watermark.read_at)):
            if watermark.implies(state, seq):
                reach(user, state, at or persisted_at)

    receipts = []
    for user, states in reached.items():
        # Sent when persisted, for anyone with a receipt (every other time is no earlier).
        states[SENT] = persisted_at
        # A later state implies the earlier ones, reached no later than it.
        later: datetime | None = None
        for state in reversed(STATES):
            at = states.get(state)
            if later is not None:
                at = later if at is None else min(at, later)
            if at is not None:
                receipts.append(Receipt(user, state, at))
                later = at
    return sorted(receipts, key=lambda r: (r.timestamp, _RANK[r.state], r.user))
