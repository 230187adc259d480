"""Scenario ``ingress``: ``POST /api/v1/messages`` against a bare DRF view validating the
same body (:class:`benchmarks.views.BareMessageApi`), through the same gunicorn."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from rest_framework.authtoken.models import Token

from benchmarks import wrk
from benchmarks.fixtures import bench_conversations
from benchmarks.processes import api_server, bench_env, cpu_of_tree, peak_rss_mb
from benchmarks.report import Progress, Report, drop_namespace, median

#: Client connections of the ingress load.
CONNECTIONS = 16

#: The paced run's rate, as a share of our closed-loop maximum.
PACED_SHARE = 0.7


def run_ingress(seconds: int, rounds: int, progress: Progress) -> Report:
    """Our maximum rate against the baseline's, then latency at 70 % of our maximum."""
    report = Report("ingress")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = bench_env(STREAM_NAMESPACE=namespace)
    report.method = {
        "rounds": rounds,
        "seconds_per_run": seconds,
        "server": "gunicorn, 2 sync workers, same settings for both",
        "load": f"wrk -t2 -c{CONNECTIONS} (closed loop) for the maximum rate; then wrk -t2 -c{CONNECTIONS} "
        "paced to 70% of our maximum (a fixed schedule per thread) for latency",
        "what": "POST /api/v1/messages with token auth, an Idempotency-Key per request, participant check "
        "and the atomic enqueue; baseline: a bare DRF view validating the same body and answering 202",
    }
    ours: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    try:
        with bench_conversations() as (sender, conversations), api_server(env) as (port, server):
            token = Token.objects.create(user=sender).key
            with tempfile.TemporaryDirectory() as folder:
                for r in range(rounds):
                    for name, url, results in (
                        ("ours", "/api/v1/messages", ours),
                        ("baseline", "/bench/bare", base),
                    ):
                        progress(f"ingress round {r + 1}/{rounds}: {name}")
                        script = Path(folder) / f"{name}.lua"
                        wrk.write_script(script, token, conversations, url)
                        cpu0 = cpu_of_tree(server.pid)
                        result = wrk.run(port, script, seconds, CONNECTIONS)
                        result["server_cpu_s"] = cpu_of_tree(server.pid) - cpu0
                        results.append(result)
                        report.rounds.append({"system": name, **result})
                best = median([o["per_s"] for o in ours])
                progress("ingress: latency at 70% of the maximum rate")
                script = Path(folder) / "paced.lua"
                wrk.write_script(script, token, conversations, "/api/v1/messages", rate=PACED_SHARE * best)
                paced = wrk.run(port, script, seconds, CONNECTIONS)
                report.rounds.append({"system": "ours at 70%", **paced})
                api_rss = peak_rss_mb(server.pid)
    finally:
        drop_namespace(namespace)
    report.figures = {
        "ingress_per_s": round(median([o["per_s"] for o in ours])),
        "baseline_per_s": round(median([b["per_s"] for b in base])),
        "ratio": round(median([o["per_s"] for o in ours]) / median([b["per_s"] for b in base]), 2),
        "p50_ms": round(paced.get("p50_ms", 0.0), 2),
        "p99_ms": round(paced.get("p99_ms", 0.0), 2),
        "offered_per_s": round(PACED_SHARE * best),
        "achieved_per_s": round(paced.get("per_s", 0.0)),
        "closed_loop_p99_ms": round(median([o.get("p99_ms", 0.0) for o in ours]), 2),
        "api_peak_rss_mb": api_rss,
    }
    return report
