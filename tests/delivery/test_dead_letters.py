"""Dead letters: the mirror, the admin (permissions, escaping, audit) and the command."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from dramatiq.errors import ConnectionClosed as BrokerConnectionError
from prometheus_client import CollectorRegistry, generate_latest

from delivery import selectors, services
from delivery.metrics import dead_letter_mirror_collector
from delivery.models import DeadLetter, Message
from delivery.services import dead_letter_mirror
from delivery.services.dead_letter_redrive import Pacer
from tests.conftest import wait_for
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


def _dead_stream_lengths(broker) -> list[int]:
    return [b.length for b in broker.dead_letter_backlog("messages")]


def _unmirrored(dead_letters, monkeypatch, *contents: str) -> None:
    """Dead-letter ``contents`` and leave them in the dead-letter streams (not mirrored)."""
    monkeypatch.setattr(services, "dead_letters_mirror", lambda: 0)
    assert dead_letters(*contents) == []


def test_the_mirror_reads_page_after_page_until_caught_up_and_trims_what_it_stored(
    dead_letters, project_broker, monkeypatch
):
    _unmirrored(dead_letters, monkeypatch, *(f"POISON {i}" for i in range(7)))
    assert sum(_dead_stream_lengths(project_broker)) == 7

    assert dead_letter_mirror.dead_letters_mirror(page_size=2) == 7

    rows = list(DeadLetter.objects.order_by("seq"))
    assert [d.seq for d in rows] == list(range(1, 8))
    assert all(bytes(d.message_data) for d in rows)  # enough to requeue without the entry
    assert _dead_stream_lengths(project_broker) == [0] * project_broker.partitions
    assert dead_letter_mirror.dead_letters_mirror(page_size=2) == 0


def test_a_mirror_that_crashes_between_the_insert_and_the_trim_duplicates_nothing(
    dead_letters, project_broker, monkeypatch
):
    _unmirrored(dead_letters, monkeypatch, "POISON a", "POISON b", "POISON c")
    real_trim = project_broker.trim_dead_letters

    def crash(*args, **kwargs):
        raise BrokerConnectionError("connection lost after the insert")

    monkeypatch.setattr(project_broker, "trim_dead_letters", crash)
    with pytest.raises(BrokerConnectionError):
        dead_letter_mirror.dead_letters_mirror()
    assert DeadLetter.objects.count() == 3
    # An older mirror kept no encoded message: the next pass fills it in before trimming.
    DeadLetter.objects.update(message_data=b"")

    monkeypatch.setattr(project_broker, "trim_dead_letters", real_trim)
    assert dead_letter_mirror.dead_letters_mirror() == 0
    assert DeadLetter.objects.count() == 3
    assert all(bytes(d.message_data) for d in DeadLetter.objects.all())
    assert sum(_dead_stream_lengths(project_broker)) == 0


def test_a_dead_letter_trimmed_from_redis_is_requeued_at_its_seq_from_its_row_alone(
    dead_letters, project_broker, redis_client
):
    kept, dropped = dead_letters("POISON kept", "POISON dropped")
    assert sum(_dead_stream_lengths(project_broker)) == 0  # the table is all there is
    dead_letters.fix()

    assert services.dead_letter_requeue(dead_letter=kept, user=None) is True
    assert services.dead_letter_requeue(dead_letter=kept, user=None) is False  # done already
    assert services.dead_letter_discard(dead_letter=dropped, user=None) is True
    project_broker.join("messages", timeout=10_000)

    assert Message.objects.get(pk=kept.message_id).seq == kept.seq
    assert not Message.objects.filter(pk=dropped.message_id).exists()
    # Nothing of either is kept in Redis: the discarded one's record went with it, the
    # persisted one's expires after its grace; neither has a "where" field any more.
    assert [redis_client.pttl(k) > 0 for k in redis_client.scan_iter("*:idem:*")] == [True]
    assert all(redis_client.hlen(k) == 0 for k in redis_client.scan_iter("*:where"))


def test_a_bulk_redrive_that_stops_half_way_goes_on_where_it_stopped(dead_letters, project_broker):
    rows = dead_letters(*(f"POISON {i}" for i in range(25)))
    dead_letters.fix()

    class Crash(Exception):
        pass

    def crash_after_the_first_page(progress: services.RedriveProgress) -> None:
        raise Crash(progress)

    with pytest.raises(Crash):
        services.dead_letters_redrive(
            action="requeue",
            dead_letters=DeadLetter.objects.all(),
            user=None,
            page_size=10,
            progress=crash_after_the_first_page,
        )
    assert DeadLetter.objects.filter(status="requeued").count() == 10

    seen: list[services.RedriveProgress] = []
    result = services.dead_letters_redrive(
        action="requeue", dead_letters=DeadLetter.objects.all(), user=None, page_size=10, progress=seen.append
    )
    assert (result.total, result.done, result.skipped) == (15, 15, 0)
    assert [p.handled for p in seen] == [10, 15]
    project_broker.join("messages", timeout=20_000)
    persisted = dict(Message.objects.values_list("id", "seq"))
    assert {str(k): v for k, v in persisted.items()} == {d.message_id: d.seq for d in rows}


def test_a_bulk_redrive_keeps_to_its_rate_and_records_who_asked(dead_letters, project_broker):
    dead_letters(*(f"POISON {i}" for i in range(12)))
    operator = make_user("operator", staff=True)
    started = time.monotonic()
    result = services.dead_letters_redrive(
        action="discard", dead_letters=DeadLetter.objects.all(), user=operator, rate=8
    )
    elapsed = time.monotonic() - started
    assert (result.total, result.done) == (12, 12)
    assert elapsed >= 0.45  # the first 8 at once, the other 4 after half a second at 8/s
    assert set(DeadLetter.objects.values_list("status", "status_changed_by")) == {("discarded", operator.pk)}
    assert LogEntry.objects.filter(user=operator, change_message="Discarded").count() == 12


def test_retention_deletes_only_rows_requeued_or_discarded_long_enough_ago(dead_letters):
    old_requeued, old_discarded, recent, dead = dead_letters(*(f"POISON {i}" for i in range(4)))
    long_ago = timezone.now() - timedelta(days=31)
    DeadLetter.objects.filter(pk=old_requeued.pk).update(status="requeued", status_changed_at=long_ago)
    DeadLetter.objects.filter(pk=old_discarded.pk).update(status="discarded", status_changed_at=long_ago)
    DeadLetter.objects.filter(pk=recent.pk).update(status="discarded", status_changed_at=timezone.now())
    DeadLetter.objects.filter(pk=dead.pk).update(dead_lettered_at=long_ago)

    assert services.dead_letters_purge(older_than=timedelta(days=30), batch_size=1) == 2
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {recent.pk, dead.pk}


def test_the_mirror_lag_is_on_the_metrics_scrape_until_the_mirror_catches_up(
    dead_letters, project_broker, monkeypatch
):
    _unmirrored(dead_letters, monkeypatch, "POISON a", "POISON b")
    registry = CollectorRegistry()
    registry.register(dead_letter_mirror_collector(project_broker, lambda: {"messages"}))
    partition = next(b.partition for b in project_broker.dead_letter_backlog("messages") if b.length)
    labels = {"queue": "messages", "partition": str(partition)}

    def lag_ms() -> float | None:
        return registry.get_sample_value("delivery_dead_letter_mirror_lag_ms", labels)

    assert registry.get_sample_value("delivery_dead_letters_unmirrored", labels) == 2
    wait_for(lambda: (lag_ms() or 0) > 0, timeout=5, what="the oldest dead letter to age")
    assert b"delivery_dead_letter_mirror_lag_ms" in generate_latest(registry)

    dead_letter_mirror.dead_letters_mirror()
    assert registry.get_sample_value("delivery_dead_letters_unmirrored", labels) == 0
    assert lag_ms() == 0


def test_the_pacer_lets_a_burst_through_then_holds_to_the_rate_whatever_the_page_sizes():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    pacer = Pacer(10, burst=5, clock=lambda: now[0], sleep=sleep)
    for count in (5, 5, 3, 7):
        pacer.wait(count)
    assert slept == [0.5, 0.3, 0.7]  # 20 items: the first 5 at once, 15 more at 10/s
    now[0] += 10  # a caller slower than the rate is never held back
    pacer.wait(5)
    assert len(slept) == 3
