"""The v1 API's routes (no trailing slashes, as the contract writes them)."""

from django.urls import path

from delivery.api import batch, views, watermarks

urlpatterns = [
    path("conversations", views.ConversationListCreateApi.as_view(), name="conversations"),
    path(
        "conversations/<uuid:conversation_id>/messages",
        views.ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
    path(
        "conversations/<uuid:conversation_id>/read",
        watermarks.ConversationReadApi.as_view(),
        name="conversation-read",
    ),
    path("messages", views.MessageCreateApi.as_view(), name="messages"),
    path("messages/batch", batch.MessageBatchCreateApi.as_view(), name="messages-batch"),
    path("messages/<uuid:message_id>", views.MessageDetailApi.as_view(), name="message-detail"),
    path("messages/<uuid:message_id>/receipts", views.ReceiptCreateApi.as_view(), name="message-receipts"),
]
