"""``POST /api/v1/messages/batch``: many messages in one request (SPEC §3).

Each item is validated and answered exactly as ``POST /api/v1/messages`` would answer it
(same fields, same errors), in the request's order; the whole request fails only for
what concerns the whole: a body that is not a list of 1 to ``BATCH_MAX_ITEMS`` items
(400), over ``BATCH_MAX_BYTES`` (413), or a queue that accepted nothing (503).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import idempotency
from delivery.api.views import (
    MessageCreateApi,
    StrictCharField,
    _correlation_id,
    _user,
    accepted_body,
    accepted_status,
    fast_message_input,
)
from delivery.errors import ApplicationError, PayloadTooLarge, ServiceUnavailable
from delivery.services.ingest import IngestResult, IngressItem
from delivery.services.ingest_batch import messages_ingest

#: Most messages one batch may carry.
BATCH_MAX_ITEMS = 100


@extend_schema_serializer(component_name="MessageBatchItem")
class ItemSerializer(MessageCreateApi.InputSerializer):
    """A message of a batch: as a single POST's body, ``client_message_id`` required (a
    batch has no ``Idempotency-Key`` header: every item carries its own key)."""

    client_message_id = StrictCharField(max_length=idempotency.CLIENT_KEY_MAX_LENGTH)


#: One item's answer: a single POST's answer (202/200) or error body, with its status.
_RESULT_FIELDS: dict[str, serializers.Field[Any, Any, Any, Any]] = {
    "status": serializers.IntegerField(help_text="202, 200, or the status a single POST would answer"),
    "message_id": serializers.UUIDField(required=False),
    "conversation_id": serializers.UUIDField(required=False),
    "seq": serializers.IntegerField(required=False),
    "state": serializers.CharField(required=False),
    "idempotent_hit": serializers.BooleanField(required=False),
    "correlation_id": serializers.CharField(required=False),
    "created_at": serializers.DateTimeField(required=False),
    "detail": serializers.CharField(required=False),
    "code": serializers.CharField(required=False),
    "errors": serializers.DictField(required=False),
}


class MessageBatchCreateApi(APIView):
    """Accept 1 to 100 messages (any conversations the caller takes part in) at once."""

    class InputSerializer(serializers.Serializer):
        # Items are checked one by one below (each as a single POST's body).
        messages = serializers.ListField(min_length=1, max_length=BATCH_MAX_ITEMS)

    @extend_schema(
        request=inline_serializer("MessageBatchInput", {"messages": ItemSerializer(many=True)}),
        responses={
            200: inline_serializer(
                "MessageBatchAnswer",
                {"results": inline_serializer("MessageBatchResult", _RESULT_FIELDS, many=True)},
            ),
            503: inline_serializer("MessageBatchUnavailable", {"detail": serializers.CharField()}),
        },
    )
    def post(self, request: Request) -> Response:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.BATCH_MAX_BYTES:
            raise PayloadTooLarge(f"the batch is {length} bytes; the limit is {settings.BATCH_MAX_BYTES}")
        envelope = self.InputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        raw_items = envelope.validated_data["messages"]
        results: list[dict[str, Any] | None] = [None] * len(raw_items)
        items: list[tuple[int, IngressItem]] = []
        for i, raw in enumerate(raw_items):
            data = fast_message_input(raw)
            if data is None or idempotency.BODY_FIELD not in data:
                serializer = ItemSerializer(data=raw)
                if not serializer.is_valid():
                    results[i] = {
                        "status": status.HTTP_400_BAD_REQUEST,
                        "detail": "invalid request",
                        "code": "invalid",
                        "errors": serializer.errors,
                    }
                    continue
                data = serializer.validated_data
            items.append(
                (
                    i,
                    IngressItem(
                        conversation_id=str(data["conversation_id"]),
                        content=data["content"],
                        client_key=data[idempotency.BODY_FIELD],
                        priority=data["priority"],
                    ),
                )
            )
        outcomes = messages_ingest(
            sender=_user(request), items=[item for _, item in items], correlation_id=_correlation_id(request)
        )
        for (i, _), outcome in zip(items, outcomes, strict=True):
            results[i] = _error(outcome) if isinstance(outcome, ApplicationError) else _accepted(outcome)
        unavailable = [o for o in outcomes if isinstance(o, ServiceUnavailable)]
        if unavailable and not any(isinstance(o, IngestResult) for o in outcomes):
            raise unavailable[0]  # nothing could be accepted: 503 with Retry-After
        return Response({"results": results}, status=status.HTTP_200_OK)


def _accepted(result: IngestResult) -> dict[str, Any]:
    return {"status": accepted_status(result), **accepted_body(result)}


def _error(error: ApplicationError) -> dict[str, Any]:
    return {"status": error.status_code, "detail": error.message, "code": error.code, **error.extra}
