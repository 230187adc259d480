"""Per-conversation sequence numbers: where numbering resumes when Redis lost a counter."""

from __future__ import annotations

from django.db.models import Max

from delivery.models import DeadLetter, Message


def sequence_floor(conversation_id: str) -> int:
    """The last ``seq`` used in a conversation, for a counter Redis no longer has.

    Redis loses counters with its data (a restart without persistence): numbering then
    resumes after the highest ``seq`` the database knows, persisted or dead-lettered.
    The broker calls it (``sequence_floor``) when a conversation's counter is missing.
    """
    persisted = Message.objects.filter(conversation_id=conversation_id).aggregate(m=Max("seq"))["m"]
    dead = DeadLetter.objects.filter(conversation_id=conversation_id).aggregate(m=Max("seq"))["m"]
    return max(persisted or 0, dead or 0)
