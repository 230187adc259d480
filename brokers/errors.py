"""The broker's errors. Redis errors are translated into Dramatiq's where they enter."""

from __future__ import annotations

from dramatiq.errors import BrokerError


class StreamsBrokerError(BrokerError):
    """Base class of the errors this broker raises itself."""


class DeadLetterNotFound(StreamsBrokerError):
    """The dead letter named does not exist (any more) in its dead-letter stream."""
