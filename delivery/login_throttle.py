"""Failed admin logins, throttled per client address and per username.

Django's admin lets anyone guess passwords as fast as they can post the form. Here
each failed login (Django's ``user_login_failed`` signal) is counted against the
client's address and against the username tried, in a fixed window; once either count
reaches ``ADMIN_LOGIN_FAILURE_RATE`` (e.g. ``10/h``), further login posts from that address
or for that username are answered 429 with ``Retry-After`` until the window ends, without
checking the password. Counts live in Django's cache (per process unless a shared cache
is configured). The address is the connection's (``REMOTE_ADDR``): behind a reverse proxy
it is the proxy's, so the per-username count is the one that holds there.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

#: Seconds in a rate's period, by its first letter (as DRF reads rates).
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _rate() -> tuple[int, int] | None:
    """(failures allowed, window in seconds), or None when the throttle is off."""
    rate = settings.ADMIN_LOGIN_FAILURE_RATE
    if not rate:
        return None
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period[0]]


@functools.cache
def _login_path() -> str:
    return reverse("admin:login")


def _keys(request: HttpRequest, username: str, window_s: int) -> list[str]:
    window = int(time.time()) // window_s
    keys = [f"login-failures:{window}:addr:{request.META.get('REMOTE_ADDR', '')}"]
    if username:
        keys.append(f"login-failures:{window}:user:{username.lower()[:150]}")
    return keys


@receiver(user_login_failed, dispatch_uid="delivery.login_throttle.count")
def count_failure(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    """Count a failed login against its address and username."""
    rate = _rate()
    if rate is None or request is None:
        return
    for key in _keys(request, str(credentials.get("username") or ""), rate[1]):
        cache.add(key, 0, timeout=rate[1])
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: this failure opens a window
            cache.set(key, 1, timeout=rate[1])


class AdminLoginThrottle:
    """Answers 429 to admin login posts from an address, or for a username, that failed
    too often in the current window."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rate = _rate() if request.method == "POST" and request.path == _login_path() else None
        if rate is not None:
            allowed, window_s = rate
            keys = _keys(request, str(request.POST.get("username", "")), window_s)
            if any((cache.get(key) or 0) >= allowed for key in keys):
                answer = HttpResponse(
                    "Too many failed logins; try again later.\n", status=429, content_type="text/plain"
                )
                answer["Retry-After"] = str(window_s - int(time.time()) % window_s)
                return answer
        return self.get_response(request)
