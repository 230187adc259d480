"""Request middleware: the correlation id that follows a message to the worker's logs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from delivery.logging import current_correlation_id

HEADER = "X-Correlation-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")


def correlation_id_from(value: str | None) -> str:
    """The client's correlation id when it is well-formed, else a new one."""
    if value and _VALID.match(value):
        return value
    return uuid.uuid4().hex


class CorrelationIdMiddleware:
    """Accepts or generates ``X-Correlation-ID`` and echoes it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        correlation_id = correlation_id_from(request.headers.get(HEADER))
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        token = current_correlation_id.set(correlation_id)
        try:
            response = self.get_response(request)
        finally:
            current_correlation_id.reset(token)
        response[HEADER] = correlation_id
        return response
