"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse

from delivery.broker import get_broker

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Redis (through the broker's own client) and the database answer; 503 with the
    reason when one does not. A probe answers whatever the failure, so it catches all."""
    checks: dict[str, str] = {}
    try:
        get_broker().ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"unreachable: {type(error).__name__}: {error}"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"unreachable: {type(error).__name__}: {error}"
        connection.close()
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        logger.warning("Not ready: %s", checks)
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
