"""Operational endpoints: liveness, readiness and the API's Prometheus metrics."""

from __future__ import annotations

import ipaddress
import logging
import threading
from functools import cache

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView

from delivery.broker import get_broker

logger = logging.getLogger(__name__)

#: The longest ``/readyz`` waits for a check, in seconds (each client's own timeouts end
#: it sooner; this bounds the answer whatever they are).
READY_CHECK_TIMEOUT_S = 4.0


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Redis (through the broker's own client) and the database answer: 200, else 503.

    The two are checked at once, so an unreachable service costs one timeout, not two.
    The answer says which is unavailable, never why (hosts, ports and roles stay in the
    log). A probe answers whatever the failure, so it catches everything.
    """
    checks = {"redis": "unavailable", "database": "unavailable"}

    def check_redis() -> None:
        try:
            get_broker().ping()
            checks["redis"] = "ok"
        except Exception as error:
            logger.warning("Not ready: Redis unreachable: %s: %s", type(error).__name__, error)

    redis_check = threading.Thread(target=check_redis, name="readyz-redis", daemon=True)
    redis_check.start()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:
        logger.warning("Not ready: database unreachable: %s: %s", type(error).__name__, error)
        connection.close()
    redis_check.join(READY_CHECK_TIMEOUT_S)
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": dict(checks)}, status=200 if ready else 503
    )


@cache
def _metrics_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in settings.METRICS_ALLOWED_NETWORKS)


def metrics_reader_allowed(address: str) -> bool:
    """Whether a client at ``address`` may read the API's metrics (``METRICS_ALLOWED_NETWORKS``)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _metrics_networks())


def metrics(request: HttpRequest) -> HttpResponse:
    """The API's Prometheus metrics (django-prometheus), for clients in
    ``METRICS_ALLOWED_NETWORKS`` only (by the connection's address, never a header)."""
    if not metrics_reader_allowed(request.META.get("REMOTE_ADDR", "")):
        return JsonResponse({"detail": "forbidden", "code": "forbidden"}, status=403)
    response: HttpResponse = ExportToDjangoView(request)
    return response
