"""The HTTP API (SPEC §3): one class per operation, business rules in services/selectors."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import idempotency, selectors, services
from delivery.models import Priority, ReceiptState
from delivery.selectors import MessageDetail

#: Largest page of ``GET /conversations/{id}/messages``.
MAX_PAGE_SIZE = 500

#: Renders datetimes as every serializer here does (ISO 8601, "Z" for UTC).
_DATETIME = serializers.DateTimeField()


def api_time(value: datetime) -> str:
    """``value`` as the serializers write it (ISO 8601, "Z" for UTC), five times cheaper
    for the UTC times ingress answers with (a batch writes a hundred)."""
    if value.tzinfo is UTC:
        return value.isoformat().replace("+00:00", "Z")
    return str(_DATETIME.to_representation(value))


def accepted_status(result: services.IngestResult) -> int:
    """200 for a repeat of an earlier message, 202 for a message enqueued now."""
    return status.HTTP_200_OK if result.idempotent_hit else status.HTTP_202_ACCEPTED


def accepted_body(result: services.IngestResult) -> dict[str, Any]:
    """An accepted message as the single and the batch POST answer it: the OutputSerializer's
    fields, written directly (building a serializer, a deep copy of its fields, cost a tenth
    of the ingress hot path; the schema still comes from it)."""
    return {
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "seq": result.seq,
        "state": result.state,
        "idempotent_hit": result.idempotent_hit,
        "correlation_id": result.correlation_id,
        "created_at": api_time(result.created_at),
    }


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers, booleans and the like instead of converting them."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


#: Characters DRF's CharField refuses: NUL and lone surrogates.
_REFUSED_CHARACTERS = re.compile("[\x00\ud800-\udfff]")

#: Priorities as ``MessageCreateApi.InputSerializer`` accepts them.
_PRIORITIES = frozenset(Priority.values)


def _plain_text(value: Any) -> bool:
    return type(value) is str and _REFUSED_CHARACTERS.search(value) is None


def fast_message_input(data: Any) -> dict[str, Any] | None:
    """What ``MessageCreateApi.InputSerializer`` validates a well-formed body to, checked
    without building the serializer (its per-request deep copy of fields cost as much as
    the rest of the validation); None for anything unusual, which the serializer then
    checks and words the errors for. ``tests/delivery/test_ingress.py`` holds the two
    to the same answers."""
    if type(data) is not dict:
        return None
    conversation_id = data.get("conversation_id")
    content: str = data.get("content", "")
    if type(conversation_id) is not str or not _plain_text(content) or not content.strip():
        return None
    try:
        conversation_uuid = uuid.UUID(hex=conversation_id)
    except ValueError:
        return None
    validated: dict[str, Any] = {"conversation_id": conversation_uuid, "content": content}
    if "client_message_id" in data:
        key = data["client_message_id"]
        # CharField trims surrounding whitespace: a key with any goes the long way.
        if type(key) is not str or idempotency.client_key_problem(key) or key != key.strip():
            return None
        validated["client_message_id"] = key
    priority = data.get("priority", Priority.NORMAL)
    if priority is not Priority.NORMAL and (type(priority) is not str or priority not in _PRIORITIES):
        return None
    validated["priority"] = priority
    return validated


def _user(request: Request) -> User:
    """The authenticated caller (every view requires authentication)."""
    user = request.user
    assert isinstance(user, User)
    return user


def _correlation_id(request: Request) -> str:
    return str(getattr(request._request, "correlation_id", ""))


class ConversationListCreateApi(APIView):
    """List the caller's conversations, or start one (the caller takes part)."""

    @extend_schema_serializer(component_name="ConversationCreateInput")
    class InputSerializer(serializers.Serializer):
        participants = serializers.ListField(child=StrictCharField(max_length=150), max_length=1000)
        title = StrictCharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema_serializer(component_name="Conversation")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        participants = serializers.SerializerMethodField()
        title = serializers.CharField()
        created_at = serializers.DateTimeField()

        def get_participants(self, conversation: Any) -> list[str]:
            return sorted(u.get_username() for u in conversation.participants.all())

    @extend_schema_serializer(component_name="ConversationListItem")
    class ListOutputSerializer(OutputSerializer):
        unread_count = serializers.SerializerMethodField(
            help_text=f"Persisted messages after the caller's read watermark that others sent, "
            f"counted up to {selectors.UNREAD_COUNT_MAX} (which then means that many or more)."
        )

        def get_unread_count(self, conversation: Any) -> int:
            return int(self.context["unread_counts"].get(conversation.pk, 0))

    @extend_schema(responses=ListOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        user = _user(request)
        conversations = selectors.conversation_list(user=user)
        unread_counts = selectors.unread_counts(user=user)
        return Response(
            self.ListOutputSerializer(conversations, many=True, context={"unread_counts": unread_counts}).data
        )

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_create(
            creator=_user(request),
            participant_usernames=serializer.validated_data["participants"],
            title=serializer.validated_data["title"],
        )
        conversation = selectors.conversation_for(user=_user(request), conversation_id=conversation.pk)
        return Response(self.OutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class MessageCreateApi(APIView):
    """Accept a message: 202 after a durable, idempotent enqueue; 200 for a repeat."""

    @extend_schema_serializer(component_name="MessageCreateInput")
    class InputSerializer(serializers.Serializer):
        conversation_id = serializers.UUIDField()
        content = StrictCharField(trim_whitespace=False)
        client_message_id = StrictCharField(required=False, max_length=idempotency.CLIENT_KEY_MAX_LENGTH)
        priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)

        def validate_content(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("content must not be empty")
            return value

        def validate_client_message_id(self, value: str) -> str:
            problem = idempotency.client_key_problem(value)
            if problem is not None:
                raise serializers.ValidationError(problem)
            return value

    @extend_schema_serializer(component_name="MessageAck")
    class OutputSerializer(serializers.Serializer):
        message_id = serializers.UUIDField()
        conversation_id = serializers.UUIDField()
        seq = serializers.IntegerField()
        state = serializers.CharField()
        idempotent_hit = serializers.BooleanField()
        correlation_id = serializers.CharField()
        created_at = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer,
        parameters=[OpenApiParameter(idempotency.HEADER, str, OpenApiParameter.HEADER, required=False)],
        responses={202: OutputSerializer, 200: OutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = fast_message_input(request.data)
        if data is None:
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        client_key = idempotency.client_key_from(
            header=request.headers.get(idempotency.HEADER), body=data.get(idempotency.BODY_FIELD)
        )
        result = services.message_ingest(
            sender=_user(request),
            conversation_id=data["conversation_id"],
            content=data["content"],
            client_key=client_key,
            priority=data["priority"],
            correlation_id=_correlation_id(request),
        )
        return Response(accepted_body(result), status=accepted_status(result))


class MessageDetailApi(APIView):
    """One message in whatever state it is: pending, persisted or dead-lettered."""

    @extend_schema_serializer(component_name="MessageDetail")
    class OutputSerializer(serializers.Serializer):
        message_id = serializers.UUIDField()
        conversation_id = serializers.UUIDField()
        seq = serializers.IntegerField()
        sender = serializers.CharField()
        content = serializers.CharField()
        state = serializers.CharField()
        created_at = serializers.DateTimeField()
        persisted_at = serializers.DateTimeField(allow_null=True)
        receipts = serializers.ListField(
            child=inline_serializer(
                "Receipt",
                {
                    "user": serializers.CharField(),
                    "state": serializers.CharField(),
                    "timestamp": serializers.DateTimeField(),
                },
            )
        )

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, message_id: Any) -> Response:
        detail: MessageDetail = selectors.message_detail(user=_user(request), message_id=message_id)
        return Response(self.OutputSerializer(detail).data)


class ConversationMessagesApi(APIView):
    """Persisted messages of a conversation in ``seq`` order, paged by a ``seq`` cursor.

    A page holds at most ``limit`` messages and about ``MESSAGE_PAGE_MAX_BYTES`` of content
    (at least one message): a page can be short and still have a ``next``."""

    class FilterSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(required=False, default=0, min_value=0)
        limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=MAX_PAGE_SIZE)

    @extend_schema_serializer(component_name="ConversationMessage")
    class MessageSerializer(serializers.Serializer):
        message_id = serializers.UUIDField(source="pk")
        conversation_id = serializers.UUIDField()
        seq = serializers.IntegerField()
        sender = serializers.SerializerMethodField()
        content = serializers.SerializerMethodField()
        state = serializers.SerializerMethodField()
        created_at = serializers.DateTimeField()
        persisted_at = serializers.DateTimeField()

        def get_sender(self, message: Any) -> str:
            return str(message.sender.get_username())

        def get_content(self, message: Any) -> str:
            return str(self.context["contents"][message.pk])

        def get_state(self, message: Any) -> str:
            return "persisted"

    @extend_schema(
        parameters=[FilterSerializer],
        responses=inline_serializer(
            "MessagePage",
            {
                "results": MessageSerializer(many=True),
                "next_after_seq": serializers.IntegerField(allow_null=True),
                "next": serializers.CharField(allow_null=True),
            },
        ),
    )
    def get(self, request: Request, conversation_id: Any) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        limit = filters.validated_data["limit"]
        messages = selectors.conversation_messages(
            user=_user(request),
            conversation_id=conversation_id,
            after_seq=filters.validated_data["after_seq"],
            limit=limit,
        )
        page = selectors.message_page_contents(messages, max_bytes=settings.MESSAGE_PAGE_MAX_BYTES)
        more = len(page) < len(messages) or len(messages) == limit
        next_after = page[-1][0].seq if page and more else None
        next_url = None
        if next_after is not None:
            next_url = request.build_absolute_uri(f"{request.path}?after_seq={next_after}&limit={limit}")
        contents = {message.pk: content for message, content in page}
        return Response(
            {
                "results": self.MessageSerializer(
                    [message for message, _ in page], many=True, context={"contents": contents}
                ).data,
                "next_after_seq": next_after,
                "next": next_url,
            }
        )


class ReceiptCreateApi(APIView):
    """A recipient records ``delivered`` or ``read``: 201 when new, 200 when a no-op."""

    @extend_schema_serializer(component_name="ReceiptCreateInput")
    class InputSerializer(serializers.Serializer):
        state = serializers.ChoiceField(choices=[ReceiptState.DELIVERED, ReceiptState.READ])

    @extend_schema(
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "ReceiptResult",
                {
                    "message_id": serializers.UUIDField(),
                    "state": serializers.CharField(),
                    "created": serializers.BooleanField(),
                },
            ),
            200: inline_serializer(
                "ReceiptNoop",
                {
                    "message_id": serializers.UUIDField(),
                    "state": serializers.CharField(),
                    "created": serializers.BooleanField(),
                },
            ),
        },
    )
    def post(self, request: Request, message_id: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        state = serializer.validated_data["state"]
        created = services.receipt_record(message_id=message_id, user=_user(request), state=state)
        return Response(
            {"message_id": str(message_id), "state": state, "created": created},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
