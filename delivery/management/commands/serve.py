"""``manage.py serve``: the whole service on embedded defaults, for a first run.

Uses the Redis at ``REDIS_URL`` or, when none answers at a local address, starts a
private ``redis-server`` (AOF on, in ``var/redis``); migrates the database (SQLite in
``var/`` by default); creates a ``demo`` user with an API token on an empty database;
then runs the API (gunicorn) and the workers (``runworkers``) until Ctrl-C.

This process owns the shutdown of everything it started: SIGINT, SIGTERM or SIGHUP to it
stops the API and the workers (SIGTERM: they finish what they hold), then the private
Redis. So does the end of the process that started it: ``make run`` is usually that
parent, and GNU make, sent SIGINT alone (not the terminal's Ctrl-C to the whole process
group), forwards nothing and waits for its children; it only resets its handler, which
:class:`ParentWatch` notices.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from messaging_project import launch
from messaging_project.config import BASE_DIR, VAR_DIR


class Command(BaseCommand):
    help = "Run the API and the workers on embedded defaults (starts a local Redis if needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--processes", type=int, default=1, help="worker processes (runworkers)")
        parser.add_argument("--threads", type=int, default=8, help="threads per worker process")

    def handle(self, *args: Any, **options: Any) -> None:
        redis_process = self.ensure_redis()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self.ensure_demo_user(options)
        children = [
            subprocess.Popen(
                launch.runworkers_argv(processes=options["processes"], threads=options["threads"])
            ),
            subprocess.Popen(
                launch.gunicorn_argv(
                    bind=f"{options['host']}:{options['port']}",
                    workers=options["web_workers"],
                    access_log=True,
                ),
                cwd=BASE_DIR,
            ),
        ]
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        parent = ParentWatch()
        self.stdout.write(f"Serving on http://{options['host']}:{options['port']}/ (Ctrl-C stops).")
        while not stop.wait(0.5):
            if any(child.poll() is not None for child in children):
                self.stderr.write("A component exited; stopping the service.")
                break
            if parent.stopping():
                self.stderr.write("The parent process is stopping (make got a signal); stopping the service.")
                break
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait()
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait()

    def ensure_redis(self) -> subprocess.Popen[bytes] | None:
        url = settings.REDIS_URL
        if _redis_answers(url):
            return None
        parts = urlsplit(url)
        local = parts.hostname in {"127.0.0.1", "localhost", "::1"}
        binary = shutil.which("redis-server")
        if settings.REDIS_CLUSTER:  # a private single node is no stand-in for a cluster
            raise CommandError(f"No Redis Cluster node answers at {url} (REDIS_CLUSTER is on).")
        if not local or binary is None:
            raise CommandError(
                f"No Redis answers at {url}. Start one (Debian: `apt-get install redis-server`, "
                "then `redis-server --daemonize yes`) or set REDIS_URL."
            )
        directory = VAR_DIR / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        port = parts.port or 6379
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            # Its own session: Ctrl-C must not stop Redis before the workers are done with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise CommandError(f"Could not start redis-server on port {port} (is the port taken?).")
            time.sleep(0.1)
        self.stdout.write(f"Started a private redis-server on port {port} (data in {directory}).")
        return process

    def ensure_demo_user(self, options: dict[str, Any]) -> None:
        """Create the ``demo`` user on an empty database; print its token on every start
        (a second ``make run`` needs it as much as the first)."""
        user = User.objects.filter(username="demo").first()
        if user is None:
            if User.objects.exists():
                return  # someone's own users: no demo account added to them
            user = User.objects.create_superuser("demo", password="demo")  # nosec B106
            self.stdout.write("Created user 'demo' (password 'demo', admin at /admin/).")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"User 'demo' (admin at /admin/), API token:\n  Authorization: Token {token.key}")


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class ParentWatch:
    """Tells when the process that started this one is going away: it exited (this
    process was handed to init), or, on Linux, it stopped catching a termination signal
    it caught at the start (GNU make's fatal-signal handler resets itself on the first
    SIGINT, SIGTERM or SIGHUP, then waits for its children before dying of it)."""

    #: The signals whose handler a dying parent resets.
    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.parent_pid = os.getppid()
        self.caught_at_start = self._caught() & self._mask()

    def stopping(self) -> bool:
        """Whether the parent exited or has started to die of a signal."""
        if os.getppid() != self.parent_pid:
            return True
        return bool(self.caught_at_start) and (self._caught() & self.caught_at_start) != self.caught_at_start

    def _mask(self) -> int:
        return sum(1 << (int(sig) - 1) for sig in self.WATCHED)

    def _caught(self) -> int:
        """The parent's caught-signal mask (``SigCgt`` in /proc), 0 where unknown."""
        try:
            with open(f"/proc/{self.parent_pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("SigCgt:"):
                        return int(line.split()[1], 16)
        except OSError:
            pass
        return 0
