"""Django admin: read-only views of the domain; dead letters change only through actions
and buttons that call the services (requeue, discard), with the
``delivery.change_deadletter`` permission, recording who and when, and logged in the
admin log. The dead-letter admin and the queue status page live in their own modules."""

from __future__ import annotations

from django.contrib import admin

from delivery.admin import dead_letters  # noqa: F401  (registers the dead-letter admin)
from delivery.admin.base import ReadOnlyAdmin
from delivery.models import Conversation, Message, MessageReceipt

admin.site.site_header = "Delivery backbone"
admin.site.site_title = "Delivery backbone admin"
admin.site.index_title = "Dead letters, queues and conversations"
# The service has no public site of its own: "View site" opens the API's documentation.
admin.site.site_url = "/api/docs/"
# The dead-letter list needs the width (1,366 px screens): no sidebar beside it.
admin.site.enable_nav_sidebar = False
# The index links to the queue status page.
admin.site.index_template = "admin/delivery/index.html"


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
