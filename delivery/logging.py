"""One JSON object per log line, with the delivery context where it is known."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: The correlation id of the request (or message) being handled, added to log records.
current_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

#: Record attributes copied into the JSON object when a log call passes them in ``extra``.
CONTEXT_FIELDS = ("correlation_id", "message_id", "conversation_id", "partition", "attempt", "queue")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message and context."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                payload[field] = value
        if "correlation_id" not in payload and (correlation_id := current_correlation_id.get()):
            payload["correlation_id"] = correlation_id
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
