"""Django admin: read-only views of the domain; dead letters change only through actions
that call the services (requeue, discard), with the ``delivery.change_deadletter``
permission, recording who and when, and logged in the admin log."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from delivery import services
from delivery.errors import ServiceUnavailable
from delivery.models import Conversation, DeadLetter, DeadLetterStatus, Message, MessageReceipt


def _staff(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are written by the service layer only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "created_at"]
    search_fields = ["id", "title", "participants__username"]
    filter_horizontal = ["participants"]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "conversation", "seq", "sender", "priority", "created_at", "persisted_at"]
    list_filter = ["priority"]
    search_fields = ["id", "conversation__id", "correlation_id", "idempotency_key"]
    ordering = ["-created_at"]


@admin.register(MessageReceipt)
class MessageReceiptAdmin(ReadOnlyAdmin):
    list_display = ["message", "user", "state", "timestamp"]
    list_filter = ["state"]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = [
        "message_id",
        "conversation_id",
        "seq",
        "partition",
        "reason",
        "attempts",
        "correlation_id",
        "status",
        "age",
    ]
    list_filter = ["queue", "reason", "status", "partition"]
    search_fields = ["message_id", "conversation_id", "correlation_id", "error"]
    actions = ["requeue", "discard"]
    readonly_fields = [
        "queue",
        "partition",
        "dead_letter_id",
        "stream_id",
        "message_id",
        "actor_name",
        "conversation_id",
        "correlation_id",
        "seq",
        "reason",
        "attempts",
        "dead_lettered_at",
        "status",
        "status_changed_by",
        "status_changed_at",
        "envelope_pretty",
        "error_pretty",
    ]
    exclude = ["envelope", "error", "traceback"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(
            request.user.has_perm("delivery.view_deadletter")
            or request.user.has_perm("delivery.change_deadletter")
        )

    @admin.display(description="age")
    def age(self, obj: DeadLetter) -> str:
        seconds = int((timezone.now() - obj.dead_lettered_at).total_seconds())
        if seconds < 3600:
            return f"{seconds // 60} min"
        if seconds < 86400:
            return f"{seconds // 3600} h"
        return f"{seconds // 86400} d"

    @admin.display(description="envelope")
    def envelope_pretty(self, obj: DeadLetter) -> str:
        # format_html escapes: message content can never inject markup into the admin.
        return format_html("<pre>{}</pre>", json.dumps(obj.envelope, indent=2, ensure_ascii=False))

    @admin.display(description="error")
    def error_pretty(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}\n\n{}</pre>", obj.error, obj.traceback)

    def _apply(self, request: HttpRequest, queryset: QuerySet[DeadLetter], action: str) -> None:
        done = skipped = 0
        try:
            for dead_letter in queryset.filter(status=DeadLetterStatus.DEAD):
                if action == "requeue":
                    ok = services.dead_letter_requeue(dead_letter=dead_letter, user=_staff(request))
                else:
                    ok = services.dead_letter_discard(dead_letter=dead_letter, user=_staff(request))
                done += ok
                skipped += not ok
        except ServiceUnavailable as error:
            self.message_user(request, f"Stopped: {error}", messages.ERROR)
        verb = "Requeued" if action == "requeue" else "Discarded"
        self.message_user(request, f"{verb} {done} dead letter(s); {skipped} skipped.", messages.SUCCESS)

    @admin.action(description="Requeue to the original partition (same id and seq)", permissions=["change"])
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._apply(request, queryset, "requeue")

    @admin.action(description="Discard for good", permissions=["change"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._apply(request, queryset, "discard")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change permission gates the list's actions; a dead letter's page stays read-only.
        return obj is None and bool(request.user.has_perm("delivery.change_deadletter"))


# Read watermarks (issue 22): kept together at the end of the file, import included, so
# this addition merges apart from the dead-letter admin's rewrite above.
from delivery.models import ReadWatermark  # noqa: E402


@admin.register(ReadWatermark)
class ReadWatermarkAdmin(ReadOnlyAdmin):
    """How far each participant has received and read each conversation (moved only by
    ``POST /api/v1/conversations/{id}/read``)."""

    list_display = ["conversation", "user", "read_seq", "read_at", "delivered_seq", "delivered_at"]
    search_fields = ["conversation__id", "user__username"]
    list_select_related = ["conversation", "user"]
    ordering = ["-delivered_at"]
