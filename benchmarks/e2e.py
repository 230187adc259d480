"""Scenario ``e2e``: POST → persisted row, through gunicorn and ``runworkers``."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from rest_framework.authtoken.models import Token

from benchmarks import wrk
from benchmarks.fixtures import bench_conversations, persisted_count
from benchmarks.processes import (
    api_server,
    bench_env,
    cpu_of_tree,
    peak_rss_mb,
    run_workers,
    wait_for_balanced_leases,
)
from benchmarks.report import BenchmarkError, Progress, Report, drop_namespace, percentile
from delivery.models import Message

#: Client connections of the e2e load. Gunicorn's sync workers (meant to sit behind a
#: buffering proxy) block on a connection accepted before its request arrives: with 64
#: paced connections idling between requests, requests queued behind idle ones (at 100/s,
#: p90 84 ms against p90 5 ms with 8 connections; docs/benchmarks.md).
E2E_CONNECTIONS = 16


def run_e2e(messages: int, rate: float, progress: Progress, batch: int = 0) -> Report:
    """Latency from the client's send to the row's ``persisted_at`` at an offered rate of
    messages per second: single POSTs, or ``batch`` messages per ``POST .../batch``."""
    report = Report("e2e")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = bench_env(STREAM_NAMESPACE=namespace)
    seconds = max(1.0, messages / rate)
    report.method = {
        "messages": messages,
        "offered_per_s": rate,
        "seconds": round(seconds),
        "batch": batch or None,
        "what": f"wrk -t2 -c{E2E_CONNECTIONS} paced to the offered rate (a fixed schedule per thread) POSTs "
        f"{'batches of ' + str(batch) + ' messages ' if batch else ''}through gunicorn "
        "(2 sync workers); runworkers (2 processes, 8 threads) persists; latency = the row's persisted_at "
        "(database clock) minus the send time the client wrote into the message",
    }
    try:
        with bench_conversations() as (sender, conversations), api_server(env) as (port, server):
            token = Token.objects.create(user=sender).key
            with run_workers(env) as workers, tempfile.TemporaryDirectory() as folder:
                progress(f"e2e: {rate:.0f}/s for {seconds:.0f} s")
                script = Path(folder) / "e2e.lua"
                url = "/api/v1/messages/batch" if batch else "/api/v1/messages"
                wrk.write_script(script, token, conversations, url, rate=rate / max(1, batch), batch=batch)
                wait_for_balanced_leases(workers, namespace)
                cpu0 = (cpu_of_tree(server.pid), cpu_of_tree(workers.pid))
                started = time.time()
                result = wrk.run(port, script, seconds, E2E_CONNECTIONS)
                acknowledged = int(result.get("requests", 0) - result["errors"]) * max(1, batch)
                deadline = time.monotonic() + 300
                while persisted_count(conversations) < acknowledged:
                    if time.monotonic() > deadline:
                        raise BenchmarkError("messages were not all persisted within 5 minutes")
                    time.sleep(0.2)
                report.method["cpu_s"] = {
                    "api_server": round(cpu_of_tree(server.pid) - cpu0[0], 2),
                    "workers": round(cpu_of_tree(workers.pid) - cpu0[1], 2),
                }
                memory = {"api_peak_rss_mb": peak_rss_mb(server.pid)}
                memory["workers_peak_rss_mb"] = peak_rss_mb(workers.pid)
                rows = list(
                    Message.objects.filter(conversation_id__in=conversations).values_list(
                        "content", "persisted_at"
                    )
                )
    finally:
        drop_namespace(namespace)
    latencies = [p.timestamp() * 1000 - float(c.split()[1]) for c, p in rows if c.startswith("sent-at ")]
    last = max((p.timestamp() for _, p in rows), default=started)
    report.figures = {
        "offered_per_s": round(rate),
        # acknowledged POSTs per second while sending; everything is persisted by the end
        "achieved_per_s": round(acknowledged / seconds),
        "persisted": len(rows),
        "drained_after_s": round(last - started, 2),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "failed_posts": int(result["errors"]),
        # The POST alone, as wrk saw it (from sending to the answer).
        "http_p50_ms": round(result.get("p50_ms", 0.0), 2),
        "http_p99_ms": round(result.get("p99_ms", 0.0), 2),
        **memory,
    }
    return report
