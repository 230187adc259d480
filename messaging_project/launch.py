"""How the project's processes are started: the command lines of the API server
(gunicorn) and of the workers (``manage.py runworkers``), in one place.

``manage.py serve``, the benchmarks and the acceptance tests all start them from here.
The command lines use this interpreter and run from :data:`BASE_DIR` (gunicorn imports
``messaging_project.wsgi`` from the working directory).
"""

from __future__ import annotations

import http.client
import sys

from messaging_project.config import BASE_DIR

#: The project's ``manage.py``.
MANAGE_PY = BASE_DIR / "manage.py"

#: How long :func:`answers_ok` waits for an answer, in seconds.
PROBE_TIMEOUT_S = 2.0


def manage_argv(*args: str) -> list[str]:
    """``python manage.py ARGS...`` with this interpreter."""
    return [sys.executable, str(MANAGE_PY), *args]


def gunicorn_argv(*, bind: str, workers: int, access_log: bool = False) -> list[str]:
    """The API server: gunicorn with the project's settings (``messaging_project.gunicorn``)
    and ``workers`` worker processes, listening on ``bind`` (``host:port``)."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "messaging_project.wsgi",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--config",
        "python:messaging_project.gunicorn",
    ]
    if access_log:
        argv += ["--access-logfile", "-"]
    return argv


def runworkers_argv(*, processes: int, threads: int, shutdown_timeout_ms: int | None = None) -> list[str]:
    """The workers: ``manage.py runworkers`` with ``processes`` processes of ``threads``
    threads (and, when given, the time they get to finish on SIGTERM)."""
    argv = manage_argv("runworkers", "--processes", str(processes), "--threads", str(threads))
    if shutdown_timeout_ms is not None:
        argv += ["--worker-shutdown-timeout", str(shutdown_timeout_ms)]
    return argv


def answers_ok(port: int, path: str = "/healthz") -> bool:
    """Whether a server on this machine's ``port`` answers ``GET path`` with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
