"""The dead-letter admin's pages beyond the list: skipped rows counted and warned about,
a confirmation before any discard and before acting on everything a filter matches, the
queue status page behind its permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client

from delivery import services
from delivery.admin import dead_letter_actions
from delivery.models import DeadLetter
from tests.conftest import wait_for
from tests.delivery.conftest import make_user

LIST = "/admin/delivery/deadletter/"


def _client(*codenames: str) -> tuple[Client, User]:
    user = make_user("operator", staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client, user


def _operator() -> Client:
    return _client("view_deadletter", "change_deadletter")[0]


def _messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def test_requeueing_an_already_requeued_row_counts_it_as_skipped_with_a_warning(dead_letters):
    first, second = dead_letters("POISON a", "POISON b")
    dead_letters.fix()
    services.dead_letter_requeue(dead_letter=first, user=None)
    client = _operator()

    response = client.post(
        LIST + "?status=all", {"action": "requeue", "_selected_action": [first.pk, second.pk]}
    )

    assert response.status_code == 302
    [(level, text)] = _messages(response)
    assert level == "warning"
    assert text.startswith("Requeued 1 dead letter(s); 1 skipped")


def test_discarding_selected_rows_asks_first_and_acts_only_once_confirmed(dead_letters):
    [dead] = dead_letters("POISON discard me")
    client = _operator()

    asked = client.post(LIST, {"action": "discard", "_selected_action": [dead.pk]})
    assert asked.status_code == 200 and b"Discard <strong>1</strong> dead letter(s)?" in asked.content
    assert DeadLetter.objects.get(pk=dead.pk).status == "dead"

    done = client.post(LIST, {"action": "discard", "_selected_action": [dead.pk], "confirm": "yes"})
    assert done.status_code == 302
    assert DeadLetter.objects.get(pk=dead.pk).status == "discarded"


def test_discarding_all_rows_the_filter_matches_through_select_all_covers_more_than_the_page(dead_letters):
    rows = dead_letters("POISON grape 1", "POISON grape 2", "POISON grape 3", "POISON kiwi")
    client = _operator()
    url = LIST + "?q=grape&status=dead"
    # the first page's box ticked, then "Select all 3 dead letters" (select_across)
    form = {"action": "discard", "_selected_action": [rows[0].pk], "select_across": "1"}

    asked = client.post(url, form)
    assert asked.status_code == 200 and b"Discard <strong>3</strong> dead letter(s)?" in asked.content

    done = client.post(url, {**form, "confirm": "yes"})
    assert done.status_code == 302
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert [statuses[row.pk] for row in rows] == ["discarded", "discarded", "discarded", "dead"]


def test_everything_matching_the_filter_is_counted_then_requeued_and_nothing_else(
    dead_letters, project_broker
):
    rows = dead_letters("POISON apple 1", "POISON apple 2", "POISON apple 3", "POISON pear")
    dead_letters.fix()
    client = _operator()
    url = "/admin/delivery/deadletter/matching/requeue/?q=apple"

    asked = client.get(url)
    assert asked.status_code == 200 and b"Requeue <strong>3</strong> dead letter(s)?" in asked.content
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"dead"}

    done = client.post(url, {"confirm": "yes"})
    assert done.status_code == 302 and done["Location"].endswith("?q=apple")
    project_broker.join("messages", timeout=10_000)
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert [statuses[row.pk] for row in rows] == ["requeued", "requeued", "requeued", "dead"]


def test_a_match_too_big_for_one_request_is_redriven_in_the_background(
    dead_letters, project_broker, monkeypatch
):
    monkeypatch.setattr(dead_letter_actions, "INLINE_REDRIVE_LIMIT", 2)
    rows = dead_letters("POISON plum 1", "POISON plum 2", "POISON plum 3", "POISON fig")
    dead_letters.fix()
    client = _operator()

    done = client.post("/admin/delivery/deadletter/matching/requeue/?q=plum", {"confirm": "yes"})
    assert done.status_code == 302
    [(level, text)] = _messages(done)
    assert level == "info" and "Requeue of 3 dead letter(s) started in the background" in text

    def statuses() -> list[str]:
        by_pk = dict(DeadLetter.objects.values_list("pk", "status"))
        return [by_pk[row.pk] for row in rows]

    wait_for(
        lambda: statuses() == ["requeued", "requeued", "requeued", "dead"], timeout=30, what="the redrive"
    )
    project_broker.join("messages", timeout=10_000)


def test_a_discard_is_refused_without_its_confirmation_and_without_the_change_permission(dead_letters):
    [dead] = dead_letters("POISON keep")
    viewer = make_user("viewer", staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    as_viewer = Client()
    as_viewer.force_login(viewer)
    assert as_viewer.post(f"{LIST}{dead.pk}/discard/", {"confirm": "yes"}).status_code == 403
    assert as_viewer.post(f"{LIST}{dead.pk}/requeue/").status_code == 403
    assert as_viewer.get(f"{LIST}matching/discard/").status_code == 403

    # an operator's POST that skipped the confirmation page
    assert _operator().post(f"{LIST}{dead.pk}/discard/").status_code == 403
    assert DeadLetter.objects.get(pk=dead.pk).status == "dead"


@pytest.mark.django_db(transaction=True)
def test_the_queue_status_page_needs_the_dead_letter_view_permission(project_broker):
    staff_only = make_user("staff", staff=True)
    client = Client()
    client.force_login(staff_only)
    assert client.get(LIST + "queues/").status_code == 403

    staff_only.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    page = client.get(LIST + "queues/")
    assert page.status_code == 200
    assert page.content.count(b"<tr><td>") >= project_broker.partitions
    assert b"No live worker process" in page.content


def test_content_is_searchable(dead_letters):
    dead_letters("POISON needle in a haystack", "POISON other")
    response = _operator().get(LIST + "?q=haystack")
    assert response.status_code == 200
    assert b"1 result" in response.content and b"needle in a haystack" in response.content
