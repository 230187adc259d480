"""Dramatiq middleware of the project's workers."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from django.db import connection
from dramatiq.middleware import Middleware


class DbConnections(Middleware):
    """Database connection hygiene for worker threads (each holds its own connection).

    After a message, a connection that saw an error is checked and closed if broken
    (the next try reconnects: a database restart costs one transient failure, never
    "connection already closed" forever), and one past ``CONN_MAX_AGE`` is closed. A
    healthy connection is not pinged before every message, unlike a web request's.
    A stopping worker thread closes its connection.
    """

    def after_process_message(self, broker: dramatiq.Broker, message: Any, **kwargs: Any) -> None:
        if connection.connection is None:
            return
        if connection.errors_occurred or not connection.get_autocommit():
            connection.close_if_unusable_or_obsolete()
        elif connection.close_at is not None and time.monotonic() >= connection.close_at:
            connection.close()

    after_skip_message = after_process_message

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        connection.close()
