"""A staff user works dead letters in a real browser: logs in, filters and searches,
opens one, requeues it from its page once the cause is fixed (the message is persisted
with its original seq), discards another through the confirmation page and looks at the
queue status page."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from selenium.webdriver.common.by import By

from delivery import services
from delivery.models import DeadLetter
from tests.browser.conftest import WINDOW_WIDTH_PX, Page
from tests.conftest import wait_for
from tests.delivery.conftest import make_user

#: The list's columns, in order: what an operator reads first comes first.
COLUMNS = [
    "status",
    "age",
    "reason",
    "error",
    "content",
    "message",
    "conversation",
    "seq",
    "attempts",
    "partition",
]


def _log_in(page: Page, username: str, password: str) -> None:
    page.open("/admin/login/?next=/admin/")
    page.find("#id_username").send_keys(username)
    page.find("#id_password").send_keys(password)
    page.click("input[type=submit]")
    page.find("#queues-module")


def _rows(page: Page) -> list[str]:
    return [row.text for row in page.all("#result_list tbody tr")]


def _api_get(base_url: str, path: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(base_url + path, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310 (the live server)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


@pytest.mark.django_db(transaction=True)
def test_staff_requeue_from_the_detail_page_and_discard_through_the_confirmation_page(
    page: Page, dead_letters, alice, project_broker
):
    # given three dead letters, one of them discarded already (history, not work)
    first, second, third = dead_letters("POISON first", "POISON second", "POISON third")
    services.dead_letter_discard(dead_letter=third, user=None)
    operator = make_user("operator", staff=True)
    operator.set_password("operator-pw")
    operator.save()
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_deadletter", "change_deadletter"])
    )
    _log_in(page, "operator", "operator-pw")

    # the list: the dead ones by default, the operator's columns first, fitting 1,366 px
    page.open("/admin/delivery/deadletter/")
    page.find("#result_list")
    headers = [h.text.strip().lower() for h in page.all("#result_list thead th")][1:]
    assert headers == COLUMNS
    assert len(_rows(page)) == 2 and all(row.startswith("Dead") for row in _rows(page))
    # no horizontal scrollbar, neither the page's nor the result table's own
    assert page.driver.execute_script("return document.documentElement.scrollWidth") <= WINDOW_WIDTH_PX
    assert page.driver.execute_script(
        "const r = document.querySelector('.results'); return r.scrollWidth <= r.clientWidth"
    )
    message_cell = page.find("#result_list tbody td.field-message_column code, #result_list tbody th code")
    assert len(message_cell.text) <= 9 and message_cell.get_attribute("title") in {
        first.message_id,
        second.message_id,
    }
    assert "cannot persist" in _rows(page)[0]
    assert "POISON" in _rows(page)[0]
    page.shot("list")

    # filtered to all and searched by content: the one message
    page.open("/admin/delivery/deadletter/?status=all")
    wait_for(lambda: len(_rows(page)) == 3, timeout=10, what="all three rows")
    page.find("#searchbar").send_keys("second\n")
    page.wait(lambda d: len(_rows(page)) == 1, "one search result")
    assert "POISON second" in _rows(page)[0]

    # opened: the title names the message; fixed, then requeued from its own page
    page.click("#result_list tbody a")
    assert "Dead letter: message" in page.text("#content h1")
    headings = page.text(".breadcrumbs") + " ".join(h.text for h in page.all("#content h1, #content > h2"))
    assert second.dead_letter_id not in headings  # no raw stream id for a title
    assert page.text(".field-sender .readonly") == "alice"  # a username, linked, not `sender_id: 1`
    assert page.find(".field-sender a").get_attribute("href").endswith(f"/admin/auth/user/{alice.pk}/change/")
    assert page.text(".field-created .readonly").endswith("UTC")  # not epoch milliseconds
    page.shot("detail")
    dead_letters.fix()
    page.click("#requeue-button")
    assert "Requeued 1 dead letter(s)" in page.text(".messagelist")
    token = Token.objects.get_or_create(user=alice)[0].key

    def persisted() -> Any:
        status, body = _api_get(page.base_url, f"/api/v1/messages/{second.message_id}", token)
        return body if status == 200 and body["state"] == "persisted" else None

    body = wait_for(persisted, timeout=30, what="the requeued message persisted")
    assert body["seq"] == second.seq
    assert not page.all("#requeue-button")  # requeued: no button any more

    # the other one: discarded through its confirmation page
    page.open(f"/admin/delivery/deadletter/{first.pk}/change/")
    page.click("#discard-button")
    assert "Discard 1 dead letter(s)?" in page.text("#confirm-summary")
    page.shot("confirm")
    assert DeadLetter.objects.get(pk=first.pk).status == "dead"  # nothing done before confirming
    page.click("#confirm-button")
    assert "Discarded 1 dead letter(s)" in page.text(".messagelist")
    assert DeadLetter.objects.get(pk=first.pk).status == "discarded"

    # everything matching a filter: the count comes before any confirmation
    page.open("/admin/delivery/deadletter/?status=all")
    page.click("#requeue-matching")
    assert "Nothing to requeue" in page.text("#confirm-summary")

    # the queue status page: partitions and the live worker holding them
    page.open("/admin/delivery/deadletter/queues/")
    assert page.text("#content h1") == "Queue status"
    assert len(page.all("#queue-messages tbody tr")) == project_broker.partitions
    page.wait(lambda d: "alive" in page.text("#workers"), "a live worker")
    page.shot("status")
    # the requeued message, persisted now, links to its page
    page.open(f"/admin/delivery/deadletter/{second.pk}/change/")
    assert (
        page.find(".field-message a").get_attribute("href").endswith(f"/message/{second.message_id}/change/")
    )


@pytest.mark.django_db(transaction=True)
def test_a_viewer_sees_no_buttons_and_swagger_ui_lists_the_operations_offline(page: Page, dead_letters):
    [dead] = dead_letters("POISON viewer")
    viewer = make_user("viewer", staff=True)
    viewer.set_password("viewer-pw")
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    _log_in(page, "viewer", "viewer-pw")

    page.open(f"/admin/delivery/deadletter/{dead.pk}/change/")
    page.find(".field-reason")
    assert not page.all("#requeue-button") and not page.all("#discard-button")
    page.open("/admin/delivery/deadletter/")
    assert not page.all("#requeue-matching") and not page.all("select[name=action]")
    # the admin's own CSS is served (a page without it has no styled header)
    assert page.driver.execute_script(
        "return getComputedStyle(document.querySelector('#header')).backgroundColor"
    ) not in ("", "rgba(0, 0, 0, 0)")

    # "View site" leads somewhere that exists: the API's documentation
    page.click("#user-tools a[href='/api/docs/']")
    page.wait(lambda d: d.current_url.endswith("/api/docs/"), "the API docs")
    operations = page.wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), "Swagger UI's operations"
    )
    paths = {op.text.replace("\u200b", "") for op in operations}
    assert "/api/v1/messages" in paths and "/api/v1/messages/batch" in paths
    scripts = [s.get_attribute("src") or "" for s in page.all("script")]
    assert scripts and all(src.startswith(page.base_url) or not src for src in scripts)
