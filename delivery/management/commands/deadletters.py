"""``manage.py deadletters list|show|requeue|discard|purge``: dead letters without redis-cli.

Every subcommand first says which Redis it reads (password redacted) and mirrors the
broker's dead-letter streams into the database, so what it shows is current. Requeue and
discard go through the same services as the admin's actions (same rules, same audit
trail): paged and paced (``--rate``), and resumable: run the same command again after a
crash and it goes on with what is left.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone
from dramatiq.errors import BrokerConnectionError

from delivery import services
from delivery.errors import ServiceUnavailable
from delivery.models import DeadLetter, DeadLetterStatus

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(value: str) -> timedelta:
    """``30s``, ``10m``, ``2h`` or ``7d`` as a timedelta.

    Called from ``handle``, not as an argparse ``type``: argparse lets a CommandError
    raised there escape as a traceback.
    """
    match = _DURATION.match(value.strip())
    if not match:
        raise CommandError(f"--older-than {value!r}: use a number and a unit, like 30s, 10m, 2h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def redacted_url(url: str) -> str:
    """``url`` without its password (``redis://:***@host:6379/0``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class ProgressBar:
    """A one-line progress bar on a terminal (nothing when stderr is not one)."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = sys.stderr.isatty()

    def update(self, progress: services.RedriveProgress) -> None:
        if not self.shown or not progress.total:
            return
        filled = self.WIDTH * progress.handled // progress.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {progress.handled}/{progress.total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


class Command(BaseCommand):
    help = "List, show, requeue or discard dead letters."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for name, text in (
            ("list", "list dead letters"),
            ("requeue", "put dead letters back on their partition (same id and seq)"),
            ("discard", "drop dead letters for good"),
        ):
            p = sub.add_parser(name, help=text)
            p.add_argument("ids", nargs="*", type=int, help="dead letter ids (as listed)")
            p.add_argument("--reason", help="only this reason (max_retries, non_retryable, ...)")
            p.add_argument("--queue", help="only this queue")
            p.add_argument("--older-than", help="only older than this (30s, 10m, 2h, 7d)")
            if name == "list":
                p.add_argument("--status", choices=[s.value for s in DeadLetterStatus], default="dead")
                p.add_argument("--limit", type=int, default=100)
            else:
                p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
                p.add_argument(
                    "--rate",
                    type=int,
                    default=0,
                    help="dead letters per second at most (default: DEAD_LETTER_REDRIVE_RATE)",
                )
        show = sub.add_parser("show", help="show one dead letter in full")
        show.add_argument("id", type=int)
        purge = sub.add_parser("purge", help="delete rows requeued or discarded long ago")
        purge.add_argument(
            "--older-than", help="status changed longer ago than this (default: DEAD_LETTER_RETENTION_DAYS)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options.get("older_than") is not None:
            options["older_than"] = parse_duration(options["older_than"])
        if options.get("rate", 0) < 0:
            raise CommandError(f"--rate {options['rate']}: use a positive number of dead letters per second")
        self.stderr.write(
            f"Dead letters of {redacted_url(settings.REDIS_URL)} (namespace {settings.STREAM_NAMESPACE})"
        )
        try:
            services.dead_letters_mirror()
        except BrokerConnectionError as error:  # still useful for what the database already has
            self.stderr.write(f"warning: could not read the dead-letter streams: {error}")
        action = options["action"]
        if action == "show":
            self.show(options["id"])
            return
        if action == "purge":
            self.purge(options["older_than"])
            return
        queryset = self.select(options)
        if action == "list":
            self.print_list(queryset[: options["limit"]])
            return
        if not options["ids"] and not options["all"]:
            raise CommandError(f"name dead letter ids, or pass --all to {action} every match")
        self.apply(action, queryset, options["rate"])

    def select(self, options: dict[str, Any]) -> QuerySet[DeadLetter]:
        queryset = DeadLetter.objects.order_by("dead_lettered_at", "id")
        queryset = queryset.filter(status=options.get("status") or DeadLetterStatus.DEAD)
        if options["ids"]:
            queryset = queryset.filter(pk__in=options["ids"])
        if options["reason"]:
            queryset = queryset.filter(reason=options["reason"])
        if options["queue"]:
            queryset = queryset.filter(queue=options["queue"])
        if options["older_than"]:
            queryset = queryset.filter(dead_lettered_at__lt=timezone.now() - options["older_than"])
        return queryset

    def print_list(self, dead_letters: QuerySet[DeadLetter]) -> None:
        rows = list(dead_letters)
        if not rows:
            self.stdout.write("No dead letters.")
            return
        self.stdout.write(
            f"{'id':>6}  {'queue':<10} {'part':>4}  {'message_id':<36}  "
            f"{'seq':>6}  {'reason':<14} {'tries':>5}  age"
        )
        now = timezone.now()
        for d in rows:
            age = int((now - d.dead_lettered_at).total_seconds())
            self.stdout.write(
                f"{d.pk:>6}  {d.queue:<10} {d.partition:>4}  {d.message_id:<36}  {d.seq or '':>6}  "
                f"{d.reason:<14} {d.attempts:>5}  {age}s"
            )

    def show(self, pk: int) -> None:
        dead: DeadLetter | None = DeadLetter.objects.filter(pk=pk).first()
        if dead is None:
            raise CommandError(f"no dead letter {pk}")
        fields = [
            "queue",
            "partition",
            "dead_letter_id",
            "stream_id",
            "message_id",
            "actor_name",
            "conversation_id",
            "correlation_id",
            "seq",
            "reason",
            "attempts",
            "dead_lettered_at",
            "status",
            "status_changed_at",
        ]
        for name in fields:
            self.stdout.write(f"{name:>17}: {getattr(dead, name)}")
        self.stdout.write(f"{'envelope':>17}: {json.dumps(dead.envelope, indent=2, ensure_ascii=False)}")
        self.stdout.write(f"{'error':>17}: {dead.error}")
        if dead.traceback:
            self.stdout.write(dead.traceback)

    def apply(self, action: str, dead_letters: QuerySet[DeadLetter], rate: int) -> None:
        bar = ProgressBar(action)
        try:
            result = services.dead_letters_redrive(
                action="requeue" if action == "requeue" else "discard",
                dead_letters=dead_letters,
                user=None,
                rate=rate or None,
                progress=bar.update,
            )
        except ServiceUnavailable as error:
            raise CommandError(f"stopped: {error}; run the same command again to go on") from None
        finally:
            bar.close()
        verb = "Requeued" if action == "requeue" else "Discarded"
        self.stdout.write(f"{verb} {result.done} of {result.total} dead letter(s).")

    def purge(self, older_than: timedelta | None) -> None:
        if older_than is None:
            if not settings.DEAD_LETTER_RETENTION_DAYS:
                raise CommandError("DEAD_LETTER_RETENTION_DAYS=0 keeps rows for ever; pass --older-than")
            older_than = timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
        deleted = services.dead_letters_purge(older_than=older_than)
        self.stdout.write(f"Deleted {deleted} requeued or discarded dead letter(s).")
