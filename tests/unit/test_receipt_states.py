"""A message's receipts as the API shows them (``delivery.receipt_states``), on their own:
watermarks and per-message rows combined, states only forward, times in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.receipt_states import (
    DELIVERED,
    READ,
    SENT,
    STATES,
    Receipt,
    Watermark,
    message_receipts,
)

PERSISTED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SEQ = 5


def at(seconds: int) -> datetime:
    """``seconds`` after the message was persisted (negative: before)."""
    return PERSISTED + timedelta(seconds=seconds)


def mark(read_seq: int, delivered_seq: int, read_s: int = 20, delivered_s: int = 10) -> Watermark:
    return Watermark(
        conversation_id="c",
        read_seq=read_seq,
        read_at=at(read_s) if read_seq else None,
        delivered_seq=delivered_seq,
        delivered_at=at(delivered_s) if delivered_seq else None,
    )


def shown(
    rows: Sequence[tuple[str, int]] = (),
    watermark: Watermark | None = None,
    recipients: tuple[str, ...] = ("bob",),
) -> dict[str, dict[str, datetime]]:
    receipts = message_receipts(
        seq=SEQ,
        persisted_at=PERSISTED,
        recipients=recipients,
        rows=[Receipt("bob", state, at(seconds)) for state, seconds in rows],
        watermarks={"bob": watermark} if watermark else {},
    )
    states: dict[str, dict[str, datetime]] = {}
    for r in receipts:
        states.setdefault(r.user, {})[r.state] = r.timestamp
    return states


#: (case, bob's per-message rows as (state, seconds after persistence), bob's watermark,
#:  what is shown for bob as {state: seconds after persistence}).
CASES = [
    ("nothing reported: SENT alone, at persistence", [], None, {SENT: 0}),
    ("an old SENT row is the same receipt", [(SENT, 0)], None, {SENT: 0}),
    ("a delivered row", [(DELIVERED, 3)], None, {SENT: 0, DELIVERED: 3}),
    ("a read row implies delivered", [(READ, 4)], None, {SENT: 0, DELIVERED: 4, READ: 4}),
    ("read and delivered rows", [(DELIVERED, 3), (READ, 4)], None, {SENT: 0, DELIVERED: 3, READ: 4}),
    ("a watermark below the message says nothing", [], mark(4, 4), {SENT: 0}),
    ("a delivered watermark at the message", [], mark(0, SEQ), {SENT: 0, DELIVERED: 10}),
    ("a read watermark past the message", [], mark(9, 9), {SENT: 0, DELIVERED: 10, READ: 20}),
    ("watermark delivered, row read", [(READ, 4)], mark(0, 9), {SENT: 0, DELIVERED: 4, READ: 4}),
    (
        "row delivered, watermark read: each state at its earliest time",
        [(DELIVERED, 3)],
        mark(9, 9),
        {SENT: 0, DELIVERED: 3, READ: 20},
    ),
    (
        "row read earlier than the watermark's move: the earliest time wins",
        [(DELIVERED, 1), (READ, 2)],
        mark(9, 9),
        {SENT: 0, DELIVERED: 1, READ: 2},
    ),
    (
        "a watermark that moved before a requeued message was persisted: reached at persistence",
        [],
        mark(9, 9, read_s=-60, delivered_s=-90),
        {SENT: 0, DELIVERED: 0, READ: 0},
    ),
    (
        "delivered never after read (the watermark's delivered time is later than the read row)",
        [(READ, 4)],
        mark(0, 9, delivered_s=30),
        {SENT: 0, DELIVERED: 4, READ: 4},
    ),
]


@pytest.mark.parametrize(("rows", "watermark", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_receipts_shown_combine_watermark_and_rows(rows, watermark, expected):
    assert shown(rows, watermark) == {"bob": {state: at(s) for state, s in expected.items()}}


def test_sent_is_implied_for_every_recipient_and_rows_of_former_members_are_kept():
    receipts = message_receipts(
        seq=SEQ,
        persisted_at=PERSISTED,
        recipients=["bob", "carol"],
        rows=[Receipt("dave", READ, at(2))],
        watermarks={"carol": mark(SEQ, SEQ)},
    )
    assert [(r.user, r.state, r.timestamp) for r in receipts] == [
        ("bob", SENT, PERSISTED),
        ("carol", SENT, PERSISTED),
        ("dave", SENT, PERSISTED),
        ("dave", DELIVERED, at(2)),
        ("dave", READ, at(2)),
        ("carol", DELIVERED, at(10)),
        ("carol", READ, at(20)),
    ]


@pytest.mark.parametrize(
    ("state", "seq", "implied"),
    [(READ, 3, True), (READ, 4, False), (DELIVERED, 6, True), (DELIVERED, 7, False), (SENT, 1, False)],
)
def test_a_watermark_implies_a_state_up_to_its_seq(state, seq, implied):
    assert Watermark("c", 3, at(1), 6, at(1)).implies(state, seq) is implied


times = st.integers(min_value=-100, max_value=100)


@given(
    rows=st.lists(st.tuples(st.sampled_from(STATES), times), max_size=6),
    read_seq=st.integers(0, 9),
    extra_delivered=st.integers(0, 9),
    read_s=times,
    delivered_s=times,
)
def test_shown_states_are_a_prefix_of_sent_delivered_read_with_times_in_order(
    rows, read_seq, extra_delivered, read_s, delivered_s
):
    watermark = mark(read_seq, read_seq + extra_delivered, read_s=read_s, delivered_s=delivered_s)
    states = shown(rows, watermark)["bob"]
    assert list(states) == list(STATES[: len(states)])  # never read without delivered, nor a gap
    timestamps = [states[s] for s in STATES if s in states]
    assert timestamps == sorted(timestamps)
    assert all(t >= PERSISTED for t in timestamps)
    reported = {state for state, _ in rows} | {s for s in (DELIVERED, READ) if watermark.implies(s, SEQ)}
    assert max(STATES.index(s) for s in states) == max(STATES.index(s) for s in reported | {SENT})
