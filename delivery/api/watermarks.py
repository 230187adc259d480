"""The read watermark's API (issue 22): ``POST /api/v1/conversations/{id}/read``.

Its own module: every reader of every message reports here, so it is the API's hottest
write, with its own fast input check (as ingress has)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import services
from delivery.models import ReceiptState
from delivery.services.receipts import MAX_SEQ

#: Renders datetimes as the serializers do (ISO 8601, "Z" for UTC).
_DATETIME = serializers.DateTimeField()


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that refuses strings, floats and booleans instead of converting them."""

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return int(super().to_internal_value(data))


#: States as ``ConversationReadApi.InputSerializer`` accepts them.
_WATERMARK_STATES = frozenset({ReceiptState.READ.value, ReceiptState.DELIVERED.value})


def fast_read_input(data: Any) -> tuple[int, str] | None:
    """The ``(seq, state)`` that ``ConversationReadApi.InputSerializer`` validates a
    well-formed body to, checked without building the serializer (as ingress does: a
    watermark is reported by every reader of every message, so this path is hotter than
    ingress); None for anything else, which the serializer then checks and words the
    errors for. ``tests/delivery/test_receipts.py`` holds the two to the same answers."""
    if type(data) is not dict:
        return None
    seq = data.get("seq")
    state = data.get("state", ReceiptState.READ.value)
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return None
    if type(state) is not str or state not in _WATERMARK_STATES:
        return None
    return seq, state


def _caller(request: Request) -> User:
    """The authenticated caller (the view requires authentication)."""
    user = request.user
    assert isinstance(user, User)
    return user


class ConversationReadApi(APIView):
    """Move the caller's read (or delivered) watermark of a conversation forward: every
    message up to ``seq`` is read. 200 with the watermark as it now stands, also when
    nothing moved (a repeat, or a ``seq`` at or below the watermark)."""

    @extend_schema_serializer(component_name="ConversationReadInput")
    class InputSerializer(serializers.Serializer):
        seq = StrictIntegerField(
            min_value=0,
            max_value=MAX_SEQ,
            help_text="Everything up to this seq; clamped to the conversation's last persisted "
            "message (messages not persisted yet stay unread); 0 marks nothing.",
        )
        state = serializers.ChoiceField(
            choices=[ReceiptState.READ, ReceiptState.DELIVERED],
            default=ReceiptState.READ,
            help_text="read (which implies delivered) or delivered",
        )

    @extend_schema_serializer(component_name="ReadWatermark")
    class OutputSerializer(serializers.Serializer):
        conversation_id = serializers.UUIDField()
        read_seq = serializers.IntegerField()
        read_at = serializers.DateTimeField(allow_null=True)
        delivered_seq = serializers.IntegerField()
        delivered_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request: Request, conversation_id: Any) -> Response:
        fast = fast_read_input(request.data)
        if fast is None:
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            fast = serializer.validated_data["seq"], serializer.validated_data["state"]
        seq, state = fast
        watermark = services.watermark_advance(
            conversation_id=conversation_id, user=_caller(request), seq=seq, state=state
        )
        # The OutputSerializer's fields, written directly (as ingress does); the schema
        # still comes from it, and tests/delivery/test_receipts.py holds the two equal.
        body = {
            "conversation_id": watermark.conversation_id,
            "read_seq": watermark.read_seq,
            "read_at": _DATETIME.to_representation(watermark.read_at) if watermark.read_at else None,
            "delivered_seq": watermark.delivered_seq,
            "delivered_at": (
                _DATETIME.to_representation(watermark.delivered_at) if watermark.delivered_at else None
            ),
        }
        return Response(body)
