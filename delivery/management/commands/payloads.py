"""``manage.py payloads sweep``: delete offloaded content that nothing refers to."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from delivery.management.commands.deadletters import parse_duration
from delivery.services.payloads import payloads_sweep


class Command(BaseCommand):
    help = "Sweep offloaded message payloads that no message or waiting dead letter refers to."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sweep = sub.add_parser("sweep", help="delete unreferenced payloads older than --older-than")
        sweep.add_argument(
            "--older-than", type=parse_duration, default=parse_duration("7d"), help="only older (default 7d)"
        )
        sweep.add_argument("--dry-run", action="store_true", help="list them, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        outcome = payloads_sweep(older_than=options["older_than"], dry_run=options["dry_run"])
        for name in outcome.orphans:
            self.stdout.write(name)
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(
            f"{verb} {len(outcome.orphans) if options['dry_run'] else outcome.deleted} of "
            f"{outcome.examined} payload(s)."
        )
