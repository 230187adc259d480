"""What every admin page of the domain shares: read-only model admins, the staff user of
a request, and times shown to the second in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest


def staff_user(request: HttpRequest) -> User | None:
    """The logged-in user of an admin request (None for an anonymous one)."""
    return request.user if isinstance(request.user, User) else None


def iso_time(value: datetime | None) -> str:
    """A time as operators compare it with logs: ISO 8601, to the second, in UTC."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time_ms(epoch_ms: int) -> str:
    """:func:`iso_time` of a time in milliseconds since the epoch (as envelopes carry it)."""
    return iso_time(datetime.fromtimestamp(epoch_ms / 1000, UTC))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are written by the service layer only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
