"""One exception handler: every error becomes JSON ``{"detail", "code"[, "errors"]}``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError, connection
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from delivery.errors import ApplicationError, ServiceUnavailable


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain and DRF errors to a status and a JSON body (never a 500 for bad input)."""
    if isinstance(exc, ApplicationError):
        body: dict[str, Any] = {"detail": exc.message, "code": exc.code, **exc.extra}
        answer = Response(body, status=exc.status_code)
        if isinstance(exc, ServiceUnavailable):
            answer["Retry-After"] = str(exc.retry_after_s)
        return answer
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is unreachable, or this persistent connection broke (a restart):
        # drop it now, so the next request reconnects.
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        answer = Response(
            {"detail": "the database is unreachable; retry later", "code": ServiceUnavailable.code},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        answer["Retry-After"] = str(ServiceUnavailable.retry_after_s)
        return answer
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "the request body is too large", "code": "payload_too_large"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        return Response({"detail": "not found", "code": "not_found"}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        return Response({"detail": "forbidden", "code": "forbidden"}, status=status.HTTP_403_FORBIDDEN)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": "invalid request", "code": "invalid", "errors": response.data}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {
            "detail": str(exc.detail) if not isinstance(exc.detail, (dict, list)) else exc.detail,
            "code": codes if isinstance(codes, str) else "error",
        }
    return response
