"""The delivery domain's errors; the API maps each to a status and a JSON body."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A request the domain refuses, with the HTTP status and code the API answers with."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    """A request field the domain refuses; answered as DRF answers a validation error
    (``errors`` maps the field to its problems)."""

    status_code = 400
    code = "invalid"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__("invalid request", extra={"errors": {field: [problem]}})


class NotFound(ApplicationError):
    """The object does not exist, or the caller may not see it (existence does not leak)."""

    status_code = 404
    code = "not_found"


class Forbidden(ApplicationError):
    """The caller may see the object but not do this to it."""

    status_code = 403
    code = "forbidden"


class IdempotencyKeyReused(ApplicationError):
    """The idempotency key was used before with a different request body."""

    status_code = 422
    code = "idempotency_key_reused"


class Conflict(ApplicationError):
    """The object is not in a state that allows this yet."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApplicationError):
    """The message content is over ``MAX_CONTENT_BYTES``."""

    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(ApplicationError):
    """A backing service (Redis) is unreachable; nothing was done. Retry later."""

    status_code = 503
    code = "service_unavailable"
    retry_after_s = 1


class IdempotencyKeyConflict(Exception):
    """Two different messages carry the same idempotency key when the second is persisted.

    Raised by the persist actor, not answered to a client: the message is dead-lettered
    without retries (another message holds its key, so no retry can succeed). It takes the
    loss of a key's Redis record while its first message was not persisted yet (Redis lost
    its data, or a dead letter outlived the record and was requeued).
    """
