"""``manage.py benchmark SCENARIO [--messages N] [--json]``: our figures beside a baseline
measured in the same run (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks.broker import run_broker
from benchmarks.cluster import run_cluster
from benchmarks.e2e import run_e2e
from benchmarks.hol import run_hol
from benchmarks.ingress import run_ingress
from benchmarks.ingress_batch import run_ingress_batch
from benchmarks.keys import DEFAULT_KEY_COUNTS, run_keys
from benchmarks.peers import run_peers
from benchmarks.persist import run_persist
from benchmarks.receipts import run_receipts
from benchmarks.report import BenchmarkError, Report, check_services
from benchmarks.scaling import DEFAULT_PROCESS_COUNTS, run_scaling
from benchmarks.takeover import run_takeover

SCENARIOS = (
    "broker", "persist", "ingress", "ingress-batch", "e2e", "takeover", "receipts", "cluster",
    "keys", "hol", "scaling", "peers",
)  # fmt: skip

#: Default message counts per scenario.
DEFAULT_MESSAGES = {
    "broker": 20_000, "persist": 50_000, "e2e": 5_000, "cluster": 20_000,
    "keys": 4_000, "hol": 50, "scaling": 60_000, "peers": 5_000,
}  # fmt: skip


def _participants(text: str) -> tuple[int, ...]:
    """``--participants``: comma-separated conversation sizes, each at least 2."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 2,50,500, got {text!r}") from None
    if not sizes or min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected distinct sizes of at least 2, got {text!r}")
    return sizes


def _counts(text: str) -> tuple[int, ...]:
    """``--keys``, ``--processes``: comma-separated counts, each at least 1."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,16,256, got {text!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct counts of at least 1, got {text!r}")
    return counts


class Command(BaseCommand):
    help = "Measure a scenario (or all of them) against its baseline measured in the same run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
        parser.add_argument("--messages", type=int, default=None, help="messages per round (hol: per key)")
        parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
        parser.add_argument("--threads", type=int, default=8, help="producer and worker threads")
        parser.add_argument("--batch-size", type=int, default=100, help="persist: messages per transaction")
        parser.add_argument("--seconds", type=int, default=10, help="ingress, receipts: seconds per run")
        parser.add_argument("--rate", type=float, default=1000.0, help="e2e: offered messages per second")
        parser.add_argument(
            "--batch",
            type=int,
            default=0,
            help="e2e: messages per POST /api/v1/messages/batch (0: single POSTs)",
        )
        parser.add_argument(
            "--participants",
            type=_participants,
            default=(2,),
            help="persist, receipts: members per conversation, comma-separated sizes measured side by side "
            "(2,50,500)",
        )
        parser.add_argument(
            "--keys",
            type=_counts,
            default=DEFAULT_KEY_COUNTS,
            help="keys: ordering key counts, comma-separated (1,16,256,4096)",
        )
        parser.add_argument(
            "--job",
            choices=["incr", "noop"],
            default="incr",
            help="keys: the job's body, one Redis INCR (as in peers) or nothing (as in broker)",
        )
        parser.add_argument(
            "--fail-seconds", type=float, default=3.0, help="hol: how long the failing key's message fails"
        )
        parser.add_argument(
            "--processes",
            type=_counts,
            default=DEFAULT_PROCESS_COUNTS,
            help="scaling: worker process counts, comma-separated (1,2,4)",
        )
        parser.add_argument(
            "--window", type=float, default=3.0, help="scaling: seconds of the steady-rate window"
        )
        parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            check_services()
        except BenchmarkError as error:
            raise CommandError(str(error)) from None
        scenarios = SCENARIOS if options["scenario"] == "all" else (options["scenario"],)
        results = []
        for scenario in scenarios:
            try:
                report = self.run(scenario, options)
            except BenchmarkError as error:
                raise CommandError(f"{scenario}: {error}") from None
            self.progress("")
            for key, value in report.figures.items():
                self.stdout.write(f"{scenario:>9} {key:<34} {value}")
            results.append(report.as_dict())
        if options["json"]:
            self.stdout.write(json.dumps(results[0] if len(results) == 1 else {"scenarios": results}))

    def run(self, scenario: str, options: dict[str, Any]) -> Report:
        """Run one scenario with the command's options."""
        messages = options["messages"] or DEFAULT_MESSAGES.get(scenario, 0)
        rounds, threads = options["rounds"], options["threads"]
        if scenario == "broker":
            return run_broker(messages, rounds, threads, self.progress)
        if scenario == "persist":
            return run_persist(
                messages, rounds, threads, options["batch_size"], self.progress, options["participants"]
            )
        if scenario == "ingress":
            return run_ingress(options["seconds"], rounds, self.progress)
        if scenario == "ingress-batch":
            return run_ingress_batch(options["seconds"], rounds, self.progress)
        if scenario == "e2e":
            return run_e2e(messages, options["rate"], self.progress, batch=options["batch"])
        if scenario == "cluster":
            return run_cluster(messages, rounds, threads, self.progress)
        if scenario == "receipts":
            return run_receipts(options["seconds"], rounds, self.progress, options["participants"])
        if scenario == "keys":
            return run_keys(messages, rounds, threads, self.progress, options["keys"], options["job"])
        if scenario == "hol":
            return run_hol(messages, rounds, threads, options["fail_seconds"], self.progress)
        if scenario == "peers":
            return run_peers(messages, rounds, threads, self.progress)
        if scenario == "scaling":
            return run_scaling(
                messages, rounds, threads, options["window"], self.progress, options["processes"]
            )
        return run_takeover(rounds, self.progress)

    def progress(self, text: str) -> None:
        """A one-line progress display on a terminal (nothing otherwise)."""
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()
