"""The database scenarios' users, conversations and messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from django.contrib.auth.models import User

from delivery.broker import MESSAGES_QUEUE, PERSIST_ACTOR
from delivery.models import Conversation, Message

#: Conversations the persistence, ingress, end-to-end and takeover scenarios use.
CONVERSATIONS = 100


@contextmanager
def bench_conversations(
    count: int = CONVERSATIONS, participants: int = 2
) -> Iterator[tuple[User, list[str]]]:
    """A sender and ``count`` conversations of ``participants`` members each (the sender,
    a recipient and ``participants - 2`` more members, the same in every conversation),
    removed afterwards."""
    if participants < 2:
        raise ValueError("a conversation of the benchmarks has at least 2 participants")
    tag = uuid.uuid4().hex[:8]
    sender = User.objects.create_user(f"bench-{tag}-a")
    recipient = User.objects.create_user(f"bench-{tag}-b")
    members = [sender, recipient]
    if participants > 2:
        # Unusable passwords: hashing one per member would take longer than the benchmark.
        members += User.objects.bulk_create(
            [User(username=f"bench-{tag}-m{i}", password="!") for i in range(participants - 2)]
        )
    conversations = []
    Through = Conversation.participants.through
    for _ in range(count):
        conversation = Conversation.objects.create(title=f"bench {tag}")
        Through.objects.bulk_create([Through(conversation=conversation, user=m) for m in members])
        conversations.append(str(conversation.pk))
    try:
        yield sender, conversations
    finally:
        Message.objects.filter(conversation_id__in=conversations).delete()
        Conversation.objects.filter(pk__in=conversations).delete()
        User.objects.filter(pk__in=[m.pk for m in members]).delete()


def _envelope(sender: User, conversation_id: str) -> dict[str, Any]:
    message_id = str(uuid.uuid4())
    return {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender.pk,
        "created_at": int(time.time() * 1000),
        "idempotency_key": f"bench:{message_id}",
        "correlation_id": "bench",
        "priority": "normal",
        "content": "benchmark message",
    }


def persist_message(sender: User, conversation_id: str) -> dramatiq.Message[Any]:
    """A message for the persist actor, sent as ingress sends it (partitioned, numbered)."""
    return dramatiq.Message(
        queue_name=MESSAGES_QUEUE,
        actor_name=PERSIST_ACTOR,
        args=(_envelope(sender, conversation_id),),
        kwargs={},
        options={"partition_key": conversation_id, "sequence_key": conversation_id},
    )


def persisted_count(conversations: list[str]) -> int:
    """Rows persisted in ``conversations``."""
    return Message.objects.filter(conversation_id__in=conversations).count()
