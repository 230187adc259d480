"""Django's PostgreSQL backend, with a client-side deadline on every answer.

The server cancels a slow statement itself (``statement_timeout``), and TCP keepalives
and ``tcp_user_timeout`` drop a connection whose packets go unacknowledged. Neither helps
when the server, or something in between, accepts bytes and never answers (a hung host,
a proxy or load balancer whose backend vanished): libpq then waits for ever. Here a
connection gives up on an answer after ``answer_timeout_ms`` (the ``OPTIONS`` key of that
name; 0 or absent: no limit), drops itself, since its state is unknown, and raises
:class:`DatabaseUnanswered`, an ``OperationalError`` like any other loss of the database.

After such a timeout (or a connection attempt that timed out), the process's calls fail
at once for a second (:data:`DATABASE_OUTAGE`, see ``messaging_project.outages``) instead of each
waiting out its own timeout.
"""

from __future__ import annotations

import types
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from django.db.backends.postgresql import base
from psycopg import errors
from psycopg.abc import PQGen

from messaging_project.outages import Outage

#: The ``OPTIONS`` key (not a libpq parameter) of the deadline, in milliseconds.
ANSWER_TIMEOUT_OPTION = "answer_timeout_ms"

#: How much longer than the server's ``statement_timeout`` a client waits for an answer
#: (a server that is alive cancels first, with a clean error on a usable connection).
ANSWER_MARGIN_MS = 1000

#: The database as this process sees it: answering, or silent since a call timed out.
#: (Its probe time is set from the options of the first connection.)
DATABASE_OUTAGE = Outage("the database", probe_s=5.0)


class DatabaseUnanswered(psycopg.OperationalError):
    """The database did not answer in time (or did not recently): nothing was sent, or
    the connection that waited was closed."""


def _fail_fast() -> None:
    reason = DATABASE_OUTAGE.check()
    if reason is not None:
        raise DatabaseUnanswered(reason)


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits at most ``answer_timeout_s`` for any answer."""

    #: Seconds to wait for the server's answer to one request (None: no limit).
    answer_timeout_s: float | None = None

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        if self.answer_timeout_s is None:
            return super().wait(gen, interval, timeout)
        _fail_fast()
        try:
            result = super().wait(gen, interval, self.answer_timeout_s if timeout is None else timeout)
        except errors._WaitTimeout:
            DATABASE_OUTAGE.timed_out()
            # The answer may still come later: the connection is of no further use.
            self.close()
            raise DatabaseUnanswered(
                f"the database did not answer within {self.answer_timeout_s} s; connection closed"
            ) from None
        DATABASE_OUTAGE.answered()
        return result


def _psycopg_with_deadlines() -> types.ModuleType:
    """psycopg as Django's backend sees it (``DatabaseWrapper.Database``): the same module,
    except that ``connect()`` makes :class:`DeadlineConnection` objects."""
    module = types.ModuleType(psycopg.__name__, psycopg.__doc__)
    module.__dict__.update(vars(psycopg))
    module.connect = DeadlineConnection.connect  # type: ignore[attr-defined]
    return module


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's PostgreSQL backend whose connections have a deadline on every answer."""

    Database = _psycopg_with_deadlines()

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        params.pop(ANSWER_TIMEOUT_OPTION, None)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        timeout_ms = int(self.settings_dict["OPTIONS"].get(ANSWER_TIMEOUT_OPTION) or 0)
        if not timeout_ms:
            return super().get_new_connection(conn_params)
        DATABASE_OUTAGE.probe_s = max(timeout_ms / 1000, float(conn_params.get("connect_timeout") or 0)) + 1
        _fail_fast()
        try:
            connection = super().get_new_connection(conn_params)
        except errors.ConnectionTimeout:
            DATABASE_OUTAGE.timed_out()
            raise
        if isinstance(connection, DeadlineConnection):
            connection.answer_timeout_s = timeout_ms / 1000
        return connection


def bound_answers() -> None:
    """Bound every answer of the database in this process (the API server's workers and
    ``runworkers`` call this at start): the server cancels statements after
    ``DATABASE_STATEMENT_TIMEOUT_MS``, the client gives up a second later and drops the
    connection, and TCP drops one whose data goes unacknowledged that long.

    Other commands (``migrate``, test databases, ``shell``) keep unbounded answers: DDL
    may rightly wait for locks, and nobody waits on them for an answer in 5 s.
    """
    statement_ms = settings.DATABASE_STATEMENT_TIMEOUT_MS
    if not statement_ms:
        return
    answer_ms = statement_ms + ANSWER_MARGIN_MS
    for db in settings.DATABASES.values():
        if db["ENGINE"] != "messaging_project.postgresql" or ANSWER_TIMEOUT_OPTION in db.get("OPTIONS", {}):
            continue
        options = db.setdefault("OPTIONS", {})
        options[ANSWER_TIMEOUT_OPTION] = answer_ms
        options["tcp_user_timeout"] = answer_ms
        options["options"] = f"{options.get('options', '')} -c statement_timeout={statement_ms}".strip()
    connections.close_all()  # connections made before keep their settings
