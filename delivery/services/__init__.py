"""Writes of the delivery domain (HackSoft services), one module per sub-domain:
conversations, ingest, persistence, receipts and dead letters.

Views, actors, the admin and commands call these (``services.message_ingest(...)``);
none of them holds business rules.
"""

from delivery.services.conversations import conversation_create
from delivery.services.dead_letter_mirror import dead_letters_mirror, dead_letters_purge
from delivery.services.dead_letter_redrive import RedriveProgress, dead_letters_redrive
from delivery.services.dead_letters import dead_letter_discard, dead_letter_requeue
from delivery.services.ingest import IngestResult, IngressItem, message_ingest
from delivery.services.ingest_batch import messages_ingest
from delivery.services.persistence import PersistOutcome, messages_persist
from delivery.services.receipts import receipt_record, watermark_advance

__all__ = [
    "IngestResult",
    "IngressItem",
    "PersistOutcome",
    "RedriveProgress",
    "conversation_create",
    "dead_letter_discard",
    "dead_letter_requeue",
    "dead_letters_mirror",
    "dead_letters_purge",
    "dead_letters_redrive",
    "message_ingest",
    "messages_ingest",
    "messages_persist",
    "receipt_record",
    "watermark_advance",
]
