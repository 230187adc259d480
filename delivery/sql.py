"""The delivery domain's raw SQL, in one place: the statements of the hot paths, where the
ORM's query compilation costs more than the query (docs/decisions/0004-persistence-path.md,
0005-ingress-round-trips.md).

A persisted message's columns are described once, in :data:`MESSAGE_COLUMNS`; both insert
statements and both row builders are derived from that table, so nothing has to be kept
aligned by position.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Field

from delivery.models import Conversation, Message, MessageReceipt, Priority, ReadWatermark

#: A message as the persist actor receives it: the envelope ingress enqueued, with ``seq``.
Envelope = dict[str, Any]


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class MessageColumn:
    """One column of a persisted message: where its value comes from and how it travels."""

    #: The ``Message`` field (its column name comes from the model).
    field: str
    #: The envelope's key that holds the value.
    envelope_key: str
    #: The value when the envelope leaves the key out; None: the key is required.
    default: Any = None
    #: The PostgreSQL expression that reads the value from its JSON text element ``{}``.
    from_json: str = "{}"
    #: Makes the envelope's value the field's Python type, for the portable statement.
    typed: Callable[[Any], Any] | None = None

    @property
    def column(self) -> str:
        """The column's name in the table."""
        field = Message._meta.get_field(self.field)
        assert isinstance(field, Field)
        return str(field.column)


#: The columns of a persisted message, in the order both insert statements use.
MESSAGE_COLUMNS = (
    MessageColumn("id", "message_id", from_json="({})::uuid", typed=UUID),
    MessageColumn("conversation", "conversation_id", from_json="({})::uuid", typed=UUID),
    MessageColumn("sender", "sender_id", from_json="({})::integer"),
    MessageColumn("content", "content", default=""),
    MessageColumn("payload_key", "payload_key", default=""),
    MessageColumn("seq", "seq", from_json="({})::bigint", typed=int),
    MessageColumn("idempotency_key", "idempotency_key"),
    MessageColumn("correlation_id", "correlation_id", default=""),
    MessageColumn("priority", "priority", default=Priority.NORMAL.value),
    # Epoch milliseconds in the envelope.
    MessageColumn(
        "created_at",
        "created_at",
        from_json="timestamptz 'epoch' + ({})::bigint * interval '1 millisecond'",
        typed=lambda ms: _from_ms(int(ms)),
    ),
)

#: What an envelope may leave out. A required key that is missing raises KeyError.
_DEFAULTS = {c.envelope_key: c.default for c in MESSAGE_COLUMNS if c.default is not None}

#: The columns' values, in order, from an envelope with the defaults filled in (one C
#: call: this runs for every persisted message).
_VALUES = operator.itemgetter(*(c.envelope_key for c in MESSAGE_COLUMNS))


def message_json_row(envelope: Envelope) -> tuple[Any, ...]:
    """An envelope's columns as an element of the PostgreSQL statement's JSON document."""
    return _VALUES({**_DEFAULTS, **envelope})


def message_params(envelope: Envelope) -> list[Any]:
    """An envelope's columns as the portable statement's parameters (prepared by each
    field for the database, as the ORM would)."""
    return [
        prep(Message, c.field, c.typed(value) if c.typed else value)
        for c, value in zip(MESSAGE_COLUMNS, message_json_row(envelope), strict=True)
    ]


def prep(model: type[Any], field: str, value: Any) -> Any:
    """``value`` as ``model.field`` hands it to the database."""
    return model._meta.get_field(field).get_db_prep_save(value, connection)


def aware_datetime(value: datetime | str | None) -> datetime | None:
    """A time a raw statement returned, as the ORM gives it: PostgreSQL returns an aware
    datetime, SQLite a naive one (or its text) in UTC."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _tables() -> tuple[str, str, str]:
    return (
        Message._meta.db_table,
        MessageReceipt._meta.db_table,
        Conversation.participants.through._meta.db_table,
    )


@cache
def sender_check() -> str:
    """Whether the sender takes part in the conversation, and the id of the persisted
    message holding an idempotency key (params: conversation, sender, key)."""
    messages, _, participants = _tables()
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"SELECT EXISTS (SELECT 1 FROM {participants} "  # nosec B608
        "WHERE conversation_id = %s AND user_id = %s), "
        f"(SELECT id FROM {messages} WHERE idempotency_key = %s)"
    )


@cache
def insert_messages_postgresql() -> str:
    """One statement: a batch of messages (param: the JSON document of
    :func:`message_json_row` rows); returns the inserted ids. No receipt row per
    recipient: SENT is implied by the persisted message (issue 22)."""
    messages, _, _ = _tables()
    columns = ", ".join(c.column for c in MESSAGE_COLUMNS)
    values = ", ".join(c.from_json.format(f"x->>{i}") for i, c in enumerate(MESSAGE_COLUMNS))
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"INSERT INTO {messages} ({columns}) "  # nosec B608
        f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS x "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    )


def insert_messages_portable(count: int) -> str:
    """``count`` messages (params: :func:`message_params` of each), for databases other
    than PostgreSQL; returns the inserted ids."""
    messages, _, _ = _tables()
    columns = ", ".join(c.column for c in MESSAGE_COLUMNS)
    row = "(" + ", ".join(["%s"] * len(MESSAGE_COLUMNS)) + ")"
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"INSERT INTO {messages} ({columns}) VALUES {', '.join([row] * count)} "  # nosec B608
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    )


def insert_receipts(count: int) -> str:
    """``count`` receipt rows (params: message, user, state of each); returns the states
    really inserted (a state already there is a no-op)."""
    _, receipts, _ = _tables()
    values = ", ".join(["(%s, %s, %s)"] * count)
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"INSERT INTO {receipts} (message_id, user_id, state) VALUES {values} "  # nosec B608
        "ON CONFLICT (message_id, user_id, state) DO NOTHING RETURNING state"
    )


#: The SQL spelling of what the watermark statement needs, per database: the larger and
#: smaller of two values, and the time now (the clock ``Now()`` gives ``persisted_at``).
_DIALECTS = {
    "postgresql": {"greatest": "GREATEST", "least": "LEAST", "now": "STATEMENT_TIMESTAMP()"},
    "sqlite": {"greatest": "MAX", "least": "MIN", "now": "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')"},
}


@cache
def advance_watermark(vendor: str) -> str:
    """One statement, whatever the conversation's size: move a user's watermark of a
    conversation forward, if the user takes part in it, and return it (``read_seq``,
    ``read_at``, ``delivered_seq``, ``delivered_at``); no row when the user does not
    take part.

    Params: the read target (0 to leave it), the delivered target, the conversation (as
    its column holds it, twice), the user. Each target is clamped to the conversation's
    highest persisted ``seq``, so a message not persisted yet (or never acknowledged) is
    not marked read before anyone could see it. ``GREATEST`` under ``ON CONFLICT`` makes
    it monotonic under concurrency: the row is locked while it is updated, and a smaller
    target leaves it as it is (a time moves only with its ``seq``).
    """
    sql = _DIALECTS["postgresql" if vendor == "postgresql" else "sqlite"]
    greatest, least, now = sql["greatest"], sql["least"], sql["now"]
    messages, _, participants = _tables()
    watermarks = ReadWatermark._meta.db_table
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"INSERT INTO {watermarks} "  # nosec B608
        "(conversation_id, user_id, read_seq, read_at, delivered_seq, delivered_at) "
        f"SELECT t.conversation_id, t.user_id, t.read_seq, CASE WHEN t.read_seq > 0 THEN {now} END, "
        f"t.delivered_seq, CASE WHEN t.delivered_seq > 0 THEN {now} END "
        f"FROM (SELECT p.conversation_id, p.user_id, {least}(%s, last.seq) AS read_seq, "
        f"{least}(%s, last.seq) AS delivered_seq "
        f"FROM {participants} p, "
        f"(SELECT COALESCE(MAX(seq), 0) AS seq FROM {messages} WHERE conversation_id = %s) AS last "
        f"WHERE p.conversation_id = %s AND p.user_id = %s) AS t "
        # SQLite needs a WHERE before an upsert's ON CONFLICT (its parser would take ON for a join's).
        "WHERE true "
        "ON CONFLICT (conversation_id, user_id) DO UPDATE SET "
        f"read_seq = {greatest}({watermarks}.read_seq, excluded.read_seq), "
        f"read_at = CASE WHEN excluded.read_seq > {watermarks}.read_seq "
        f"THEN excluded.read_at ELSE {watermarks}.read_at END, "
        f"delivered_seq = {greatest}({watermarks}.delivered_seq, excluded.delivered_seq), "
        f"delivered_at = CASE WHEN excluded.delivered_seq > {watermarks}.delivered_seq "
        f"THEN excluded.delivered_at ELSE {watermarks}.delivered_at END "
        "RETURNING read_seq, read_at, delivered_seq, delivered_at"
    )


@cache
def unread_counts() -> str:
    """For each conversation a user takes part in: the persisted messages after the
    user's read watermark that others sent, counted up to a cap (params: the cap, the
    user). One statement for the whole list: the participants' user index finds the
    conversations, the unique (conversation, user) index the watermarks, and the unique
    (conversation, seq) index each conversation's messages after the watermark; the cap
    bounds how many index entries a long-unread conversation costs."""
    messages, _, participants = _tables()
    watermarks = ReadWatermark._meta.db_table
    return (  # bandit B608: the names come from the models; values are bound parameters
        "SELECT p.conversation_id, "  # nosec B608
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {messages} m "
        "WHERE m.conversation_id = p.conversation_id AND m.seq > COALESCE(w.read_seq, 0) "
        "AND m.sender_id <> p.user_id LIMIT %s) AS unread) "
        f"FROM {participants} p LEFT JOIN {watermarks} w "
        "ON w.conversation_id = p.conversation_id AND w.user_id = p.user_id "
        "WHERE p.user_id = %s"
    )


def batch_check(conversations: int, keys: int) -> str:
    """For a batch: the conversations the sender takes part in among ``conversations``
    given ones, and the persisted messages holding any of ``keys`` given idempotency keys,
    in one round trip (params: sender, the conversations, the keys). Rows are
    ``("p", conversation id, NULL)`` and ``("k", key, message id)``."""
    messages, _, participants = _tables()
    in_conversations = ", ".join(["%s"] * conversations)
    in_keys = ", ".join(["%s"] * keys) if keys else "NULL"
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"SELECT 'p', CAST(conversation_id AS TEXT), NULL FROM {participants} "  # nosec B608
        f"WHERE user_id = %s AND conversation_id IN ({in_conversations}) "
        f"UNION ALL "
        f"SELECT 'k', idempotency_key, CAST(id AS TEXT) FROM {messages} WHERE idempotency_key IN ({in_keys})"
    )
