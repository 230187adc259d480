"""Offloaded message content: what storage holds that no message refers to any more.

Ingress names offloaded content by its digest within the conversation, so repeats, refused
requests and retries after a 503 write the same file again instead of an orphan each.
What is still left without a reference (its request failed and was never retried, or its
message was discarded) is swept once it is old enough that no pending message can still
refer to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.files.storage import Storage, storages
from django.db.models import Q
from django.utils import timezone

from delivery.models import DeadLetter, DeadLetterStatus, Message


@dataclass(frozen=True, slots=True)
class SweepOutcome:
    """What a sweep found and did."""

    examined: int
    orphans: list[str]
    deleted: int


def payloads_sweep(*, older_than: timedelta, dry_run: bool = False) -> SweepOutcome:
    """Delete offloaded payloads older than ``older_than`` that no persisted message and no
    dead letter still waiting (dead) refers to. Pending messages are younger than any
    sensible ``older_than`` (their content is written when they are acknowledged)."""
    storage = storages["payloads"]
    cutoff = timezone.now() - older_than
    examined, orphans = 0, []
    for conversation, names in _by_conversation(storage):
        old = [name for name in names if _modified(storage, name) < cutoff]
        examined += len(names)
        if not old:
            continue
        referenced = set(
            Message.objects.filter(conversation_id=conversation, payload_key__in=old).values_list(
                "payload_key", flat=True
            )
        )
        waiting = DeadLetter.objects.filter(
            Q(status=DeadLetterStatus.DEAD) & Q(conversation_id=conversation)
        ).values_list("envelope", flat=True)
        referenced |= {
            str(envelope.get("payload_key")) for envelope in waiting if envelope.get("payload_key")
        }
        orphans += [name for name in old if name not in referenced]
    deleted = 0
    if not dry_run:
        for name in orphans:
            storage.delete(name)
            deleted += 1
    return SweepOutcome(examined=examined, orphans=orphans, deleted=deleted)


def _by_conversation(storage: Storage) -> Iterator[tuple[str, list[str]]]:
    """(conversation id, payload names) per conversation folder of the storage."""
    folders, _ = storage.listdir("")
    for folder in folders:
        _, files = storage.listdir(folder)
        yield folder, [f"{folder}/{name}" for name in files]


def _modified(storage: Storage, name: str) -> datetime:
    return storage.get_modified_time(name)
