"""Offloaded content leaves no orphan behind: repeats and retries reuse one file, and
what nothing refers to any more is swept once it is old."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from django.core.files.storage import storages
from django.core.management import call_command
from django.test import override_settings

from delivery.services.payloads import payloads_sweep
from tests.delivery.conftest import send


def payload_files() -> list[Path]:
    root = Path(storages["payloads"].location)
    return sorted(p for p in root.rglob("*") if p.is_file())


@override_settings(INLINE_PAYLOAD_MAX_BYTES=64)
def test_repeats_and_retries_of_large_content_write_one_file(api, conversation, project_broker, tmp_path):
    with override_settings(STORAGES={**_storages(tmp_path)}):
        content = "long message " * 20
        send(api, conversation, content, client_message_id="k-1")
        send(api, conversation, content, client_message_id="k-1")  # a repeat
        send(api, conversation, content, client_message_id="k-2")  # another message, same content
        assert len(payload_files()) == 1


@override_settings(INLINE_PAYLOAD_MAX_BYTES=64)
def test_sweep_deletes_old_unreferenced_payloads_and_keeps_the_rest(
    api, conversation, run_worker, project_broker, tmp_path, capsys
):
    with override_settings(STORAGES={**_storages(tmp_path)}):
        kept = send(api, conversation, "persisted content " * 20)
        run_worker()
        project_broker.join("messages", timeout=10_000)
        storage = storages["payloads"]
        orphan = storage.save(f"{conversation.pk}/orphan", _content("a request that failed after the write"))
        young = storage.save(f"{conversation.pk}/young", _content("written a moment ago"))
        old = time.time() - 8 * 86_400
        for name in (
            orphan,
            *[str(p.relative_to(storage.location)) for p in payload_files() if "young" not in p.name],
        ):
            os.utime(storage.path(name), (old, old))

        assert payloads_sweep(older_than=timedelta(days=7), dry_run=True).orphans == [orphan]
        call_command("payloads", "sweep", "--older-than", "7d")

        assert not storage.exists(orphan) and storage.exists(young)
        assert api.get(f"/api/v1/messages/{kept['message_id']}").json()["content"].startswith("persisted")
        assert "Deleted 1 of 3 payload(s)." in capsys.readouterr().out


def _storages(tmp_path: Path) -> dict[str, dict[str, object]]:
    from django.conf import settings

    return {
        **settings.STORAGES,
        "payloads": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "payloads")},
        },
    }


def _content(text: str) -> object:
    from django.core.files.base import ContentFile

    return ContentFile(text.encode())
