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

from delivery.models import Conversation, Message, MessageReceipt, Priority

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
    """One statement: a batch of messages (params: the JSON document of
    :func:`message_json_row` rows, the SENT state) and, for the rows really inserted,
    SENT receipts for the other participants; returns the inserted ids."""
    messages, receipts, participants = _tables()
    columns = ", ".join(c.column for c in MESSAGE_COLUMNS)
    values = ", ".join(c.from_json.format(f"x->>{i}") for i, c in enumerate(MESSAGE_COLUMNS))
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"WITH inserted AS ("  # nosec B608
        f"  INSERT INTO {messages} ({columns})"
        f"  SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS x"
        f"  ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, conversation_id, sender_id"
        f"), receipts AS ("
        f"  INSERT INTO {receipts} (message_id, user_id, state)"
        f"  SELECT i.id, p.user_id, %s FROM inserted i"
        f"  JOIN {participants} p ON p.conversation_id = i.conversation_id AND p.user_id <> i.sender_id"
        f"  ON CONFLICT (message_id, user_id, state) DO NOTHING"
        f") SELECT id FROM inserted"
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


def insert_sent_receipts_portable(count: int) -> str:
    """SENT receipts for the other participants of ``count`` messages (params: the SENT
    state, then the message ids)."""
    messages, receipts, participants = _tables()
    marks = ", ".join(["%s"] * count)
    return (  # bandit B608: the names come from the models; values are bound parameters
        f"INSERT INTO {receipts} (message_id, user_id, state) "  # nosec B608
        f"SELECT m.id, p.user_id, %s FROM {messages} m "
        f"JOIN {participants} p ON p.conversation_id = m.conversation_id "
        f"WHERE m.id IN ({marks}) AND p.user_id <> m.sender_id "
        "ON CONFLICT (message_id, user_id, state) DO NOTHING"
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
