"""Writes of conversations."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from delivery.errors import NotFound
from delivery.models import Conversation


def conversation_create(*, creator: User, participant_usernames: list[str], title: str = "") -> Conversation:
    """Create a conversation between ``creator`` and the named users.

    Raises:
      NotFound: a named user does not exist (all unknown names are listed).
    """
    names = set(participant_usernames)
    users = list(User.objects.filter(username__in=names))
    missing = names - {u.username for u in users}
    if missing:
        raise NotFound(
            f"unknown users: {', '.join(sorted(missing))}", extra={"unknown_users": sorted(missing)}
        )
    with transaction.atomic():
        conversation = Conversation.objects.create(title=title)
        conversation.participants.add(creator, *users)
    return conversation
