"""``manage.py deadletters list|show|requeue|discard``: dead letters without redis-cli.

Every subcommand first mirrors the broker's dead-letter streams into the database, so
what it shows is current. Requeue and discard go through the same services as the
admin's actions (same rules, same audit trail).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from typing import Any

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
    """``30s``, ``10m``, ``2h`` or ``7d`` as a timedelta."""
    match = _DURATION.match(value.strip())
    if not match:
        raise CommandError(f"--older-than {value!r}: use a number and a unit, like 30s, 10m, 2h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


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
            p.add_argument(
                "--older-than", type=parse_duration, help="only older than this (30s, 10m, 2h, 7d)"
            )
            if name == "list":
                p.add_argument("--status", choices=[s.value for s in DeadLetterStatus], default="dead")
                p.add_argument("--limit", type=int, default=100)
            else:
                p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
        show = sub.add_parser("show", help="show one dead letter in full")
        show.add_argument("id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            services.dead_letters_mirror()
        except BrokerConnectionError as error:  # still useful for what the database already has
            self.stderr.write(f"warning: could not read the dead-letter streams: {error}")
        action = options["action"]
        if action == "show":
            self.show(options["id"])
            return
        queryset = self.select(options)
        if action == "list":
            self.print_list(queryset[: options["limit"]])
            return
        if not options["ids"] and not options["all"]:
            raise CommandError(f"name dead letter ids, or pass --all to {action} every match")
        self.apply(action, list(queryset))

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

    def apply(self, action: str, dead_letters: list[DeadLetter]) -> None:
        total, done = len(dead_letters), 0
        tty = sys.stderr.isatty()
        service = services.dead_letter_requeue if action == "requeue" else services.dead_letter_discard
        for i, dead in enumerate(dead_letters, 1):
            try:
                done += service(dead_letter=dead, user=None)
            except ServiceUnavailable as error:
                raise CommandError(f"stopped after {i - 1} of {total}: {error}") from None
            if tty:
                width = 30
                filled = width * i // total
                sys.stderr.write(f"\r{action} [{'#' * filled}{'.' * (width - filled)}] {i}/{total}")
                sys.stderr.flush()
        if tty and total:
            sys.stderr.write("\n")
        verb = "Requeued" if action == "requeue" else "Discarded"
        self.stdout.write(f"{verb} {done} of {total} dead letter(s).")
