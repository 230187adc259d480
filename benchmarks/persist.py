"""Scenario ``persist``: the real persist actor in batches against one message per
transaction."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import dramatiq
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Max
from dramatiq import Worker

from benchmarks.fixtures import CONVERSATIONS, bench_conversations, persist_message, persisted_count
from benchmarks.processes import cpu_self, self_peak_rss_mb
from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, median
from brokers import RedisStreamsBroker
from delivery import actors
from delivery.broker import MESSAGES_QUEUE
from delivery.models import Message
from delivery.worker_middleware import DbConnections


def _round(
    sender: User, conversations: list[str], messages: int, batch_size: int, threads: int
) -> dict[str, float]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisStreamsBroker(
        settings.REDIS_URL, namespace=namespace, partitions=settings.STREAM_PARTITIONS
    )
    broker.add_middleware(DbConnections())
    dramatiq.actor(
        broker=broker,
        actor_name=actors.persist_messages.actor_name,
        queue_name=MESSAGES_QUEUE,
        **{**actors.persist_messages.options, "batch_size": batch_size},
    )(actors.persist_messages.fn)
    before = persisted_count(conversations)
    try:
        for i in range(messages):
            broker.enqueue(persist_message(sender, conversations[i % len(conversations)]))
        worker = Worker(broker, worker_threads=threads)
        cpu0, started = cpu_self(), time.time()
        worker.start()
        deadline = time.monotonic() + 600
        # Polled slowly (counting rows costs the database); the end is the last row's time.
        while persisted_count(conversations) < before + messages:
            if time.monotonic() > deadline:
                raise BenchmarkError("persistence did not finish within 10 minutes")
            time.sleep(0.25)
        cpu = cpu_self() - cpu0
        last = Message.objects.filter(conversation_id__in=conversations).aggregate(last=Max("persisted_at"))
        elapsed = last["last"].timestamp() - started
        worker.stop()
        broker.close()
    finally:
        drop_namespace(namespace)
    Message.objects.filter(conversation_id__in=conversations).delete()
    return {"per_s": messages / elapsed, "cpu_s": cpu}


def run_persist(
    messages: int,
    rounds: int,
    threads: int,
    batch_size: int,
    progress: Progress,
    participants: tuple[int, ...] = (2,),
) -> Report:
    """Rows persisted per second by the real actor, batched and one at a time, into
    conversations of each size in ``participants`` (rounds alternate the sizes, so each
    figure stands beside the others measured at the same moment)."""
    report = Report("persist")
    report.method = {
        "messages": messages,
        "rounds": rounds,
        "threads": threads,
        "batch_size": batch_size,
        "conversations": CONVERSATIONS,
        "participants": list(participants),
        "what": f"N envelopes enqueued over {settings.STREAM_PARTITIONS} partitions, then a Worker runs the "
        "real persist actor until every row is in the database; baseline: the same actor with "
        "batch_size=1 (one message per transaction); rounds alternate, and within a round the "
        "conversation sizes (members per conversation) alternate",
    }
    ours: dict[int, list[float]] = {p: [] for p in participants}
    base: dict[int, list[float]] = {p: [] for p in participants}
    baseline_messages = max(1, messages // 4)
    with ExitStack() as stack:
        groups = {p: stack.enter_context(bench_conversations(participants=p)) for p in participants}
        for r in range(rounds):
            for p, (sender, conversations) in groups.items():
                progress(f"persist round {r + 1}/{rounds}, {p} members: ours")
                result = _round(sender, conversations, messages, batch_size, threads)
                ours[p].append(result["per_s"])
                report.rounds.append({"system": "ours", "participants": p, **result})
                progress(f"persist round {r + 1}/{rounds}, {p} members: baseline")
                result = _round(sender, conversations, baseline_messages, 1, threads)
                base[p].append(result["per_s"])
                report.rounds.append({"system": "baseline", "participants": p, **result})
    report.method["baseline_messages"] = baseline_messages
    first = participants[0]
    report.figures = {
        "persist_per_s": round(median(ours[first])),
        "baseline_per_s": round(median(base[first])),
        "ratio": round(median(ours[first]) / median(base[first]), 2),
    }
    if len(participants) > 1:
        for p in participants:
            report.figures[f"persist_per_s_{p}_members"] = round(median(ours[p]))
            report.figures[f"baseline_per_s_{p}_members"] = round(median(base[p]))
        for p in participants[1:]:
            # Time per message into the larger group over time per message into the first.
            report.figures[f"time_{p}_vs_{first}_members"] = round(median(ours[first]) / median(ours[p]), 2)
    report.figures["process_peak_rss_mb"] = self_peak_rss_mb()
    return report
