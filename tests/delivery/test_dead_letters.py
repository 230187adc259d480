"""Dead letters: the mirror, the admin (permissions, escaping, audit) and the command."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from delivery import selectors, services
from delivery.models import DeadLetter, Message
from tests.delivery.conftest import XSS, make_user


def test_mirror_is_idempotent_on_the_stream_entry(dead_letters):
    [dead] = dead_letters("POISON " + XSS, "fine")
    assert services.dead_letters_mirror() == 0
    assert DeadLetter.objects.count() == 1
    assert (dead.reason, dead.attempts, dead.seq) == ("max_retries", 1, 1)
    assert "cannot persist" in dead.error and dead.envelope["content"].startswith("POISON")


def test_admin_shows_dead_letters_escaped_and_acts_only_with_the_change_permission(
    dead_letters, transactional_db
):
    [dead] = dead_letters("POISON " + XSS)
    viewer = make_user("viewer", staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client = Client()
    client.force_login(viewer)

    page = client.get(f"/admin/delivery/deadletter/{dead.pk}/change/")
    assert page.status_code == 200
    assert XSS.encode() not in page.content  # no stored XSS from message content or errors
    assert b"&lt;script&gt;" in page.content
    listing = client.get("/admin/delivery/deadletter/")
    assert listing.status_code == 200 and b'value="requeue"' not in listing.content  # no actions offered
    refused = client.post("/admin/delivery/deadletter/", {"action": "requeue", "_selected_action": [dead.pk]})
    assert refused.status_code in (200, 302, 403)
    dead.refresh_from_db()
    assert dead.status == "dead"


def test_admin_requeue_records_who_and_when_and_logs_it(dead_letters, project_broker, transactional_db):
    [dead] = dead_letters("POISON once")
    dead_letters.fix()
    operator = make_user("operator", staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_deadletter", "change_deadletter"])
    )
    client = Client()
    client.force_login(operator)

    response = client.post(
        "/admin/delivery/deadletter/", {"action": "requeue", "_selected_action": [dead.pk]}
    )
    assert response.status_code == 302
    project_broker.join("messages", timeout=10_000)
    dead.refresh_from_db()
    assert (dead.status, dead.status_changed_by) == ("requeued", operator)
    assert dead.status_changed_at is not None
    assert Message.objects.get(pk=dead.message_id).seq == dead.seq
    assert LogEntry.objects.filter(user=operator, object_id=str(dead.pk), change_message="Requeued").exists()


def test_requeueing_an_already_persisted_message_is_a_harmless_no_op(dead_letters, project_broker):
    [dead] = dead_letters("POISON twice")
    dead_letters.fix()
    assert services.dead_letter_requeue(dead_letter=dead, user=None) is True
    project_broker.join("messages", timeout=10_000)
    # the same dead letter, seen again (say, from a second admin tab)
    dead.status = "dead"
    assert services.dead_letter_requeue(dead_letter=dead, user=None) is False
    project_broker.join("messages", timeout=10_000)
    assert Message.objects.filter(pk=dead.message_id).count() == 1


def test_deadletters_command_lists_shows_requeues_and_discards(dead_letters, project_broker, capsys):
    first, second, third = dead_letters("POISON a", "POISON b", "POISON c")
    call_command("deadletters", "list")
    listed = capsys.readouterr().out
    assert all(d.message_id in listed for d in (first, second, third))

    call_command("deadletters", "show", str(first.pk))
    assert "cannot persist" in capsys.readouterr().out

    with pytest.raises(CommandError, match="--all"):
        call_command("deadletters", "requeue")
    dead_letters.fix()
    call_command("deadletters", "requeue", str(first.pk))
    assert "Requeued 1 of 1" in capsys.readouterr().out
    call_command("deadletters", "discard", "--all", "--reason", "max_retries")
    assert "Discarded 2 of 2" in capsys.readouterr().out
    project_broker.join("messages", timeout=10_000)

    assert Message.objects.filter(pk=first.message_id).exists()
    assert not Message.objects.filter(pk__in=[second.message_id, third.message_id]).exists()
    assert project_broker.dead_letters("messages") == []
    call_command("deadletters", "list", "--status", "discarded", "--older-than", "0s")
    assert second.message_id in capsys.readouterr().out
    with pytest.raises(CommandError, match="--older-than"):
        call_command("deadletters", "list", "--older-than", "soon")


def test_a_discarded_dead_letter_shows_its_message_as_discarded_and_a_requeued_one_as_pending(
    dead_letters, api, project_broker, transactional_db
):
    gone, back = dead_letters("POISON one", "POISON two")
    assert api.get(f"/api/v1/messages/{gone.message_id}").json()["state"] == "dead_lettered"

    assert services.dead_letter_discard(dead_letter=gone, user=None)
    assert services.dead_letter_requeue(dead_letter=back, user=None)

    discarded = api.get(f"/api/v1/messages/{gone.message_id}")
    assert discarded.status_code == 200
    assert (discarded.json()["state"], discarded.json()["content"]) == ("discarded", "POISON one")
    assert discarded.json()["seq"] == gone.seq
    assert api.get(f"/api/v1/messages/{back.message_id}").json()["state"] == "pending"
    # A repeat of the discarded message's POST says so too, rather than "pending".
    assert selectors.message_state(gone.message_id) == "discarded"
