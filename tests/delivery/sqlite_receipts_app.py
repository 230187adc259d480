"""The portable (SQLite) statements of receipts, run for real in a process of their own.

``DATABASE_URL=sqlite:///... python -m tests.delivery.sqlite_receipts_app`` migrates an
empty SQLite database (the quick start's), persists three messages, moves a watermark
and prints one JSON object of what the services and selectors answered.
"""

from __future__ import annotations

import json
import os
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messaging_project.settings")
django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from delivery import selectors, services  # noqa: E402
from delivery.errors import NotFound  # noqa: E402
from delivery.models import Conversation, MessageReceipt  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    conversation = Conversation.objects.create()
    conversation.participants.add(alice, bob)
    envelopes = [
        {
            "message_id": str(uuid.uuid4()),
            "conversation_id": str(conversation.pk),
            "sender_id": (bob if seq == 2 else alice).pk,
            "created_at": 1_700_000_000_000,
            "idempotency_key": f"sqlite:{seq}",
            "content": f"m{seq}",
            "seq": seq,
        }
        for seq in (1, 2, 3)
    ]
    persisted = services.messages_persist(envelopes=envelopes)
    unread_before = selectors.unread_counts(user=bob)[conversation.pk]
    with CaptureQueriesContext(connection) as queries:
        delivered = services.watermark_advance(
            conversation_id=conversation.pk, user=bob, seq=99, state="delivered"
        )
    read = services.watermark_advance(conversation_id=conversation.pk, user=bob, seq=1)
    late = services.watermark_advance(conversation_id=conversation.pk, user=bob, seq=0)
    try:
        services.watermark_advance(conversation_id=uuid.uuid4(), user=bob, seq=1)
        outsider = "advanced"
    except NotFound:
        outsider = "not found"
    detail = selectors.message_detail(user=alice, message_id=uuid.UUID(envelopes[0]["message_id"]))
    print(
        json.dumps(
            {
                "vendor": connection.vendor,
                "inserted": persisted.inserted,
                "receipt_rows": MessageReceipt.objects.count(),
                "statements": len(queries),
                "unread_before": unread_before,
                "unread_after": selectors.unread_counts(user=bob)[conversation.pk],
                "delivered": [delivered.read_seq, delivered.delivered_seq, delivered.read_at is None],
                "read": [read.read_seq, read.delivered_seq],
                "times_aware": all(
                    t is not None and t.tzinfo is not None for t in (read.read_at, read.delivered_at)
                ),
                "late": [late.read_seq, late.delivered_seq, late.read_at == read.read_at],
                "outsider": outsider,
                "receipts": [(r["user"], r["state"]) for r in detail.receipts],
            }
        )
    )


if __name__ == "__main__":
    main()
