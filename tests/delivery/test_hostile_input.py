"""Hostile requests: every answer under /api/ is a 4xx (or a shaped 5xx) JSON body, and
none of them leaves new metric series behind."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from django.conf import settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from delivery import selectors
from delivery.api import urls as api_urls

#: Deeper than Python's JSON decoder can recurse.
VERY_DEEP = 100_000

#: Nested just short of where the decoder gives up, here: parsed, then refused by the view.
DEEP = 900


def _nested(depth: int) -> str:
    return '{"content": ' + "[" * depth + "]" * depth + "}"


def _v1_paths() -> list[str]:
    """Every v1 route, its path parameters filled in (routes added later are covered too)."""
    return [
        "/api/v1/" + re.sub(r"<[^>]+>", str(uuid.uuid4()), str(pattern.pattern))
        for pattern in api_urls.urlpatterns
    ]


def _assert_json_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"detail", "code"}
    return dict(body)


@pytest.mark.parametrize("depth", [VERY_DEEP, DEEP])
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(api, conversation, depth):
    parsed = 0
    for path in _v1_paths():
        response = api.post(path, _nested(depth), content_type="application/json")
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert response["Content-Type"].startswith("application/json")
        if response.status_code != 405:  # a route that takes a POST body
            parsed += 1
            if depth == VERY_DEEP:
                assert response.json()["code"] == "parse_error", path
    assert parsed >= 3


def test_a_body_over_the_upload_limit_is_a_413_json_before_it_is_read(api, conversation):
    body = json.dumps(
        {"conversation_id": str(conversation.pk), "content": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    )
    response = api.post("/api/v1/messages", body, content_type="application/json")
    assert _assert_json_error(response, 413)["code"] == "payload_too_large"


def test_an_unknown_api_path_is_a_404_json(api):
    body = _assert_json_error(api.get("/api/v1/no-such-thing"), 404)
    assert body == {"detail": "not found", "code": "not_found"}
    assert _assert_json_error(APIClient().post("/api/v2/messages", {}), 404)["code"] == "not_found"


def test_a_crash_under_the_api_is_a_500_json_and_is_still_logged(api, monkeypatch, caplog):
    def crash(**_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(selectors, "conversation_list", crash)
    api.raise_request_exception = False
    body = _assert_json_error(api.get("/api/v1/conversations"), 500)
    assert body == {"detail": "internal server error", "code": "server_error"}
    assert any("a bug" in str(r.exc_info) for r in caplog.records if r.exc_info)


def test_a_made_up_method_is_a_405_json_and_adds_no_metric_series(api):
    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for family in REGISTRY.collect()
            for s in family.samples
            if s.name.startswith("django_http_")
        }

    api.get("/api/v1/conversations")  # the known series exist
    before = series()
    for i in range(40):
        response = api.generic(f"MADEUP{i}", "/api/v1/conversations")
        body = _assert_json_error(response, 405)
        assert body["code"] == "method_not_allowed" and "GET" in response["Allow"]
    assert api.generic("MADEUP", "/admin/").status_code == 405  # everywhere, not only the API
    grown = series() - before
    assert not [s for s in grown if any(v.startswith("MADEUP") for _, v in s[1])]
    assert len(series()) == len(before)


def test_metrics_of_the_api_are_served_to_allowed_addresses_only():
    client = APIClient()
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert b"django_http" not in refused.content


def test_a_host_outside_the_allowed_hosts_is_refused_with_a_400_json(api):
    body = _assert_json_error(api.get("/api/v1/conversations", HTTP_HOST="attacker.example"), 400)
    assert body["code"] == "bad_request"
    assert api.get("/api/v1/conversations", HTTP_HOST="localhost").status_code == 200  # the default hosts
