"""Failed admin logins are throttled per client address and per username."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from tests.delivery.conftest import make_user

LOGIN = "/admin/login/"


@pytest.fixture
def limit(transactional_db: None) -> int:
    cache.clear()
    make_user("ops", staff=True)
    yield int(settings.ADMIN_LOGIN_FAILURE_RATE.partition("/")[0])
    cache.clear()


def _login(username: str, password: str, address: str) -> Any:
    return Client(REMOTE_ADDR=address).post(LOGIN, {"username": username, "password": password})


def test_after_the_allowed_failures_an_address_gets_429_even_with_the_right_password(limit):
    for _ in range(limit):
        assert _login("ops", "wrong", "198.51.100.7").status_code == 200  # the form, with its error
    refused = _login("ops", "pw", "198.51.100.7")
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 3600
    assert _login("nobody", "pw", "198.51.100.7").status_code == 429  # the address is throttled


def test_a_username_guessed_from_many_addresses_is_throttled_too(limit):
    for i in range(limit):
        assert _login("ops", "wrong", f"198.51.100.{i + 10}").status_code == 200
    assert _login("ops", "pw", "203.0.113.1").status_code == 429
    assert _login("OPS", "pw", "203.0.113.2").status_code == 429  # usernames compared without case


def test_successful_logins_and_other_users_are_not_throttled(limit):
    for _ in range(limit - 1):
        _login("ops", "wrong", "198.51.100.7")
    assert _login("ops", "pw", "198.51.100.7").status_code == 302  # logged in
    assert _login("someone", "wrong", "203.0.113.5").status_code == 200
