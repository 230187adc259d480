"""Schemathesis over the OpenAPI schema: generated requests, valid and not, never a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from delivery.models import Conversation
from messaging_project.wsgi import application
from tests.delivery.conftest import make_user

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)

#: Cases per operation: bounded, so the suite stays quick.
MAX_EXAMPLES = 25


@pytest.fixture
def auth_header(transactional_db: None, redis_client: Any, project_broker: Any) -> dict[str, str]:
    alice, bob = make_user("fuzz-alice"), make_user("fuzz-bob")
    conversation = Conversation.objects.create()
    conversation.participants.add(alice, bob)
    return {"Authorization": f"Token {Token.objects.create(user=alice).key}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_generated_request_makes_a_server_error(case: Any, auth_header: dict[str, str]) -> None:
    case.call_and_validate(headers=auth_header, checks=[not_a_server_error])
