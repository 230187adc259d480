"""The dead-letter admin: a list that fits a 1,366 px screen (status, age, reason, error,
content first; dead ones by default; content searchable), a detail page with Requeue and
Discard buttons, a confirmation page before anything is discarded or before acting on
everything a filter matches, and the queue status page beside it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from delivery.admin import dead_letter_display as show
from delivery.admin import queue_status
from delivery.admin.base import ReadOnlyAdmin, iso_time, iso_time_ms, staff_user
from delivery.admin.dead_letter_actions import (
    Operation,
    Outcome,
    dead_letters_apply,
    dead_letters_matching_apply,
)
from delivery.models import DeadLetter, DeadLetterStatus

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices


class StatusFilter(admin.SimpleListFilter):
    """Status, showing the dead ones unless asked otherwise (requeued and discarded rows
    are history, not work)."""

    title = "status"
    parameter_name = "status"
    ALL = "all"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*DeadLetterStatus.choices, (self.ALL, "All")]

    def choices(self, changelist: Any) -> Iterator[_ListFilterChoices]:
        current = self.value() or DeadLetterStatus.DEAD
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        value = self.value() or DeadLetterStatus.DEAD
        return queryset if value == self.ALL else queryset.filter(status=value)


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Dead letters: browse with ``delivery.view_deadletter``; requeue and discard with
    ``delivery.change_deadletter``."""

    list_display = [
        "status_column",
        "age_column",
        "reason",
        "error_column",
        "content_column",
        "message_column",
        "conversation_column",
        "seq",
        "attempts",
        "partition",
    ]
    list_display_links = ["message_column"]
    list_filter = [StatusFilter, "reason", "queue", "partition"]
    search_fields = ["message_id", "conversation_id", "correlation_id", "error", "envelope__content"]
    search_help_text = "Message, conversation or correlation id, error text or message content."
    list_per_page = 50
    actions = ["requeue", "discard"]
    fieldsets = [
        ("What failed", {"fields": ["status", "reason", "error_block", "attempts", "dead_lettered"]}),
        (
            "The message",
            {"fields": ["message", "conversation", "sender", "seq", "content", "correlation_id", "created"]},
        ),
        ("Who acted", {"fields": ["status_changed_by", "status_changed"]}),
        ("Where it was", {"fields": ["queue", "partition", "stream_id", "dead_letter_id", "actor_name"]}),
        ("Envelope", {"classes": ["collapse"], "fields": ["envelope_block"]}),
    ]
    readonly_fields = [
        "status",
        "reason",
        "error_block",
        "attempts",
        "dead_lettered",
        "message",
        "conversation",
        "sender",
        "seq",
        "content",
        "correlation_id",
        "created",
        "status_changed_by",
        "status_changed",
        "queue",
        "partition",
        "stream_id",
        "dead_letter_id",
        "actor_name",
        "envelope_block",
    ]

    class Media:
        css = {"all": ["delivery/admin.css"]}

    # --- permissions ------------------------------------------------------------------
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(
            request.user.has_perm("delivery.view_deadletter")
            or request.user.has_perm("delivery.change_deadletter")
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change permission gates the actions and buttons; the form itself stays read-only.
        return obj is None and bool(request.user.has_perm("delivery.change_deadletter"))

    def can_act(self, request: HttpRequest) -> bool:
        """Whether the user may requeue and discard."""
        return bool(request.user.has_perm("delivery.change_deadletter"))

    # --- list columns -----------------------------------------------------------------
    @admin.display(description="status", ordering="status")
    def status_column(self, obj: DeadLetter) -> SafeString:
        return format_html('<span class="dl-status dl-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="age", ordering="-dead_lettered_at")
    def age_column(self, obj: DeadLetter) -> SafeString:
        return format_html(
            '<span title="{}">{}</span>', iso_time(obj.dead_lettered_at), show.age(obj.dead_lettered_at)
        )

    @admin.display(description="error")
    def error_column(self, obj: DeadLetter) -> SafeString:
        return show.error_line(obj)

    @admin.display(description="content")
    def content_column(self, obj: DeadLetter) -> str:
        return show.content_snippet(obj)

    @admin.display(description="message", ordering="message_id")
    def message_column(self, obj: DeadLetter) -> SafeString:
        return show.short_id(obj.message_id)

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation_column(self, obj: DeadLetter) -> SafeString:
        return show.short_id(obj.conversation_id)

    # --- detail fields ------------------------------------------------------------------
    @admin.display(description="error")
    def error_block(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre>{}\n\n{}</pre>", obj.error, obj.traceback)

    @admin.display(description="dead-lettered at")
    def dead_lettered(self, obj: DeadLetter) -> str:
        return f"{iso_time(obj.dead_lettered_at)} ({show.age(obj.dead_lettered_at)} ago)"

    @admin.display(description="message id")
    def message(self, obj: DeadLetter) -> SafeString:
        return show.message_link(obj, persisted=show.message_persisted(obj))

    @admin.display(description="conversation id")
    def conversation(self, obj: DeadLetter) -> SafeString:
        return show.conversation_link(obj)

    @admin.display(description="sender")
    def sender(self, obj: DeadLetter) -> SafeString:
        return show.sender_link(obj)

    @admin.display(description="content")
    def content(self, obj: DeadLetter) -> SafeString:
        return format_html('<pre class="dl-content">{}</pre>', show.content_text(obj))

    @admin.display(description="sent at (ingress)")
    def created(self, obj: DeadLetter) -> str:
        created_ms = (obj.envelope or {}).get("created_at")
        return iso_time_ms(created_ms) if isinstance(created_ms, int) else "-"

    @admin.display(description="status changed at")
    def status_changed(self, obj: DeadLetter) -> str:
        return iso_time(obj.status_changed_at)

    @admin.display(description="envelope")
    def envelope_block(self, obj: DeadLetter) -> SafeString:
        return show.envelope_block(obj)

    # --- pages ----------------------------------------------------------------------------
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        context = {
            "title": "Dead letters",
            "subtitle": None,
            "can_act": self.can_act(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        obj = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if obj is not None:
            context["title"] = (
                f"Dead letter: message {show.short(obj.message_id)} (seq {obj.seq}), {obj.reason}"
            )
            context["subtitle"] = None  # not the raw stream id (shown under "Where it was")
            context["breadcrumb"] = f"Message {show.short(obj.message_id)} (seq {obj.seq})"
            context["can_act"] = self.can_act(request) and obj.status == DeadLetterStatus.DEAD
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("queues/", view(self.queue_status_view), name="delivery_queue_status"),
            path(
                "matching/<str:operation>/",
                view(self.matching_view),
                name="delivery_deadletter_matching",
            ),
            *(
                path(
                    f"<path:object_id>/{op.value}/",
                    view(self.one_view),
                    {"operation": op.value},
                    name=f"delivery_deadletter_{op.value}",
                )
                for op in Operation
            ),
            *super().get_urls(),
        ]

    def queue_status_view(self, request: HttpRequest) -> HttpResponse:
        """The queues' partitions and the live worker processes, read-only."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return queue_status.render(request, dict(self.admin_site.each_context(request)))

    def one_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """Requeue (a POST) or discard (confirmed on a page first) one dead letter."""
        op = _operation(operation)
        if not self.can_act(request):
            raise PermissionDenied
        dead_letter = get_object_or_404(DeadLetter, pk=object_id)
        detail_url = reverse("admin:delivery_deadletter_change", args=[dead_letter.pk])
        if op is Operation.DISCARD and request.method == "POST" and request.POST.get("confirm") != "yes":
            raise PermissionDenied  # a discard always goes through its confirmation page
        if request.method != "POST":
            if op is Operation.REQUEUE:
                return HttpResponseRedirect(detail_url)
            return self._confirm(request, op, [dead_letter], count=1, cancel_url=detail_url)
        outcome = dead_letters_apply([dead_letter], operation=op, user=staff_user(request))
        self._report(request, outcome)
        if op is Operation.DISCARD:
            return HttpResponseRedirect(reverse("admin:delivery_deadletter_changelist"))
        return HttpResponseRedirect(detail_url)

    def matching_view(self, request: HttpRequest, operation: str) -> HttpResponse:
        """Requeue or discard every dead letter the list's current filter and search match,
        after a page that shows how many."""
        op = _operation(operation)
        if not self.can_act(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        matching = changelist.get_queryset(request).filter(status=DeadLetterStatus.DEAD)
        list_url = reverse("admin:delivery_deadletter_changelist") + changelist.get_query_string()
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            outcome = dead_letters_matching_apply(matching, operation=op, user=staff_user(request))
            self._report(request, outcome)
            return HttpResponseRedirect(list_url)
        return self._confirm(request, op, list(matching[:10]), count=matching.count(), cancel_url=list_url)

    # --- list actions ---------------------------------------------------------------------
    @admin.action(
        description="Requeue selected (same id and seq, original partition)", permissions=["change"]
    )
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._report(
            request, dead_letters_apply(queryset, operation=Operation.REQUEUE, user=staff_user(request))
        )

    @admin.action(description="Discard selected for good…", permissions=["change"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        if request.POST.get("confirm") == "yes":
            outcome = dead_letters_apply(queryset, operation=Operation.DISCARD, user=staff_user(request))
            self._report(request, outcome)
            return None
        return self._confirm(
            request,
            Operation.DISCARD,
            list(queryset[:10]),
            count=queryset.count(),
            cancel_url=request.get_full_path(),
            # The boxes ticked; with Django's "select all N", select_across=1 says the
            # filter's rows, whatever their number (the form posts back to the filtered list).
            selected=request.POST.getlist(ACTION_CHECKBOX_NAME),
        )

    # --- helpers ----------------------------------------------------------------------------
    def _report(self, request: HttpRequest, outcome: Outcome) -> None:
        self.message_user(request, str(outcome), outcome.level)

    def _confirm(
        self,
        request: HttpRequest,
        operation: Operation,
        examples: list[DeadLetter],
        *,
        count: int,
        cancel_url: str,
        selected: list[str] | None = None,
    ) -> TemplateResponse:
        verb = "Requeue" if operation is Operation.REQUEUE else "Discard"
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} {count} dead letter(s)?",
            "opts": self.model._meta,
            "operation": operation.value,
            "verb": verb,
            "count": count,
            "examples": examples,
            "more": max(0, count - len(examples)),
            "cancel_url": cancel_url,
            "selected": selected,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "select_across": request.POST.get("select_across", "0"),
            "media": self.media,
        }
        return TemplateResponse(request, "admin/delivery/deadletter/confirm.html", context)


def _operation(value: str) -> Operation:
    try:
        return Operation(value)
    except ValueError:
        raise Http404(f"No such operation: {value}") from None
