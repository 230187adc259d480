"""Client idempotency keys are scoped per (sender, conversation) (SPEC §3).

Rows persisted with a client key hold ``c:{sender_id}:{client_key}``; ingress now looks
keys up as ``c:{sender_id}:{conversation_id}:{client_key}`` (delivery/idempotency.py).
This rewrites them, each with its row's conversation, so that a retry of a message
persisted before the change is still found. Keys of messages sent without one
(``d:...``) are unique per message and never looked up: they stay as they are.

Messages acknowledged before the deploy but persisted after this runs keep the old key
(their envelope carries it), and their Redis records are under the old key too: a client
retry of one of them sent after the deploy is taken for a new message. Where that window
matters, stop ingress and let the workers drain the queue before migrating.

The formats are written out here (not imported): a migration keeps meaning what it
meant when it was written.
"""

from django.db import migrations

#: One statement on PostgreSQL (the table may be large).
FORWARD_POSTGRESQL = """
UPDATE delivery_message
SET idempotency_key = 'c:' || sender_id || ':' || conversation_id || ':'
    || substr(idempotency_key, length('c:' || sender_id || ':') + 1)
WHERE starts_with(idempotency_key, 'c:' || sender_id || ':')
"""

BACKWARD_POSTGRESQL = """
UPDATE delivery_message
SET idempotency_key = 'c:' || sender_id || ':'
    || substr(idempotency_key, length('c:' || sender_id || ':' || conversation_id || ':') + 1)
WHERE starts_with(idempotency_key, 'c:' || sender_id || ':' || conversation_id || ':')
"""


def _rewrite(apps, schema_editor, forward):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD_POSTGRESQL if forward else BACKWARD_POSTGRESQL)
        return
    Message = apps.get_model("delivery", "Message")
    changed = []
    for message in Message.objects.filter(idempotency_key__startswith="c:").only(
        "id", "idempotency_key", "sender_id", "conversation_id"
    ):
        old = f"c:{message.sender_id}:"
        new = f"c:{message.sender_id}:{message.conversation_id}:"
        prefix, replacement = (old, new) if forward else (new, old)
        if message.idempotency_key.startswith(prefix):
            message.idempotency_key = replacement + message.idempotency_key[len(prefix) :]
            changed.append(message)
    Message.objects.bulk_update(changed, ["idempotency_key"], batch_size=500)


def scope_client_keys_per_conversation(apps, schema_editor):
    _rewrite(apps, schema_editor, forward=True)


def unscope_client_keys(apps, schema_editor):
    """Back to keys per sender; fails (unique key) once a sender used one key in two
    conversations, as the old format cannot tell those messages apart."""
    _rewrite(apps, schema_editor, forward=False)


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(scope_client_keys_per_conversation, unscope_client_keys, elidable=False),
    ]
