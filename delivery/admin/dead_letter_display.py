"""How a dead letter reads in the admin: short ids with the full one on hover, ages, a
one-line error, a content snippet and the envelope with times and users spelled out.

Everything is escaped (``format_html``): message content and errors are user input."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from delivery.admin.base import iso_time, iso_time_ms
from delivery.models import DeadLetter, Message

#: Characters of an id shown in the list (the full id is in the hover title).
SHORT_ID_CHARS = 8

#: Characters of the error and of the content shown in one list row.
ERROR_LINE_CHARS = 70
CONTENT_SNIPPET_CHARS = 50

#: Envelope fields that hold a time in milliseconds since the epoch.
EPOCH_MS_FIELDS = ("created_at",)


def short(value: str) -> str:
    """The last characters of an id: message ids are UUID v7, whose first ones are a
    time stamp that messages of the same moment share."""
    return value if len(value) <= SHORT_ID_CHARS else f"…{value[-SHORT_ID_CHARS:]}"


def short_id(value: str) -> SafeString:
    """:func:`short`, the whole id on hover."""
    return format_html('<code title="{}">{}</code>', value, short(value) or "-")


def age(dead_lettered_at: datetime) -> str:
    """How long ago, in the largest whole unit (``42 s``, ``5 min``, ``3 h``, ``2 d``)."""
    seconds = max(0, int((timezone.now() - dead_lettered_at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def error_line(dead_letter: DeadLetter) -> SafeString:
    """The error's first line, cut to fit a row; all of it on hover."""
    first = (dead_letter.error.strip().splitlines() or [""])[0]
    return format_html(
        '<span title="{}">{}</span>', dead_letter.error, Truncator(first).chars(ERROR_LINE_CHARS)
    )


def content_text(dead_letter: DeadLetter) -> str:
    """The message's content, or where it was offloaded to."""
    envelope = dead_letter.envelope or {}
    if "content" in envelope:
        return str(envelope["content"])
    if "payload_key" in envelope:
        return f"(stored as {envelope['payload_key']})"
    return ""


def content_snippet(dead_letter: DeadLetter) -> str:
    """The start of the content, on one line."""
    return Truncator(" ".join(content_text(dead_letter).split())).chars(CONTENT_SNIPPET_CHARS)


def sender(dead_letter: DeadLetter) -> User | None:
    """The user who sent the message (None when unknown or deleted)."""
    sender_id = (dead_letter.envelope or {}).get("sender_id")
    if not isinstance(sender_id, int):
        return None
    return User.objects.filter(pk=sender_id).first()


def readable_envelope(dead_letter: DeadLetter) -> dict[str, Any]:
    """The envelope with times in ISO 8601 and the sender's username beside its id."""
    envelope = dict(dead_letter.envelope or {})
    for field in EPOCH_MS_FIELDS:
        if isinstance(envelope.get(field), int):
            envelope[field] = iso_time_ms(envelope[field])
    user = sender(dead_letter)
    if user is not None:
        envelope["sender"] = user.get_username()
    return envelope


def envelope_block(dead_letter: DeadLetter) -> SafeString:
    """The readable envelope as escaped, indented JSON."""
    return format_html(
        "<pre>{}</pre>", json.dumps(readable_envelope(dead_letter), indent=2, ensure_ascii=False)
    )


def admin_link(url: str, text: str, *, title: str = "") -> SafeString:
    """A link, escaped."""
    return format_html('<a href="{}" title="{}">{}</a>', url, title or text, text)


def message_persisted(dead_letter: DeadLetter) -> bool:
    """Whether the dead letter's message is in the database now (requeued and persisted)."""
    try:
        message_uuid = UUID(dead_letter.message_id)
    except ValueError:
        return False
    return Message.objects.filter(pk=message_uuid).exists()


def message_link(dead_letter: DeadLetter, *, persisted: bool) -> SafeString:
    """The message's admin page once persisted, else a search for it among messages."""
    if persisted:
        url = reverse("admin:delivery_message_change", args=[dead_letter.message_id])
        return admin_link(url, dead_letter.message_id)
    url = reverse("admin:delivery_message_changelist") + f"?q={dead_letter.message_id}"
    return format_html("{} (not persisted: {})", dead_letter.message_id, admin_link(url, "search messages"))


def conversation_link(dead_letter: DeadLetter) -> SafeString:
    """The conversation's admin page."""
    if not dead_letter.conversation_id:
        return format_html("-")
    url = reverse("admin:delivery_conversation_change", args=[dead_letter.conversation_id])
    return admin_link(url, dead_letter.conversation_id)


def sender_link(dead_letter: DeadLetter) -> SafeString:
    """The sender's user page, named by username."""
    user = sender(dead_letter)
    if user is None:
        return format_html("-")
    url = reverse("admin:auth_user_change", args=[user.pk])
    return admin_link(url, user.get_username())


def times_line(dead_letter: DeadLetter) -> str:
    """When it was dead-lettered, to the second."""
    return iso_time(dead_letter.dead_lettered_at)
