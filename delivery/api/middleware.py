"""HTTP middleware of the API: unknown methods refused before metrics see them, every
error answered as JSON under ``/api/``, an unreachable database answered 503."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from django.db import InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from delivery.errors import ServiceUnavailable
from delivery.middleware import HEADER as CORRELATION_HEADER

logger = logging.getLogger(__name__)

#: HTTP's methods (RFC 9110, and PATCH); a request with any other is refused before the
#: metrics middleware labels series with it (each made-up method cost a histogram's worth
#: of new series). Views answer 405 to the ones they do not take, as always.
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")

#: Where every answer, errors included, is JSON.
API_PREFIX = "/api/"

#: The ``code`` of an error answer without one of its own, by status.
_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "throttled",
    500: "server_error",
    503: ServiceUnavailable.code,
}

Handler = Callable[[HttpRequest], HttpResponse]


def json_error(status: int, detail: str | None = None) -> JsonResponse:
    """An error answer shaped as ``delivery.api.errors`` shapes them."""
    phrase = HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else "error"
    code = _CODES.get(status, phrase.replace(" ", "_"))
    return JsonResponse({"detail": detail or phrase, "code": code}, status=status)


class KnownMethodsOnly:
    """Answers 405 (JSON) to a method outside :data:`KNOWN_METHODS`: a client error, not
    a 501 that would count as the server's.

    Sits right after django-prometheus's first middleware (whose series carry no method)
    and before its last one (whose series are labelled with the method)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in KNOWN_METHODS:
            answer = json_error(405, "unknown method")
            answer["Allow"] = ", ".join(m for m in KNOWN_METHODS if m not in ("TRACE", "CONNECT"))
            return answer
        return self.get_response(request)


class JsonErrors:
    """Errors as JSON where clients expect JSON, and a lost database as 503.

    * Under ``/api/``, any error answer that is not JSON already (Django's 404 for an
      unknown path, its 400 for a request it refuses, its 500 for a crash, which Django
      has logged) is replaced by ``{"detail", "code"}`` with the same status.
    * On any path, a view that fails because the database is unreachable is answered 503
      with ``Retry-After`` (the connection is dropped so the next request reconnects).
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            replacement = json_error(response.status_code)
            for header in (CORRELATION_HEADER, "Retry-After", "Allow", "WWW-Authenticate"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning(
            "Database unreachable while answering %s %s: %s", request.method, request.path, exception
        )
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        answer = json_error(503, "the database is unreachable; retry later")
        answer["Retry-After"] = str(ServiceUnavailable.retry_after_s)
        return answer
