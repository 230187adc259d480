"""Scenario ``ingress-batch``: messages per second through ``POST /api/v1/messages/batch``
(batches of 1, 10 and 100) against single ``POST /api/v1/messages``, same server, same run."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from rest_framework.authtoken.models import Token

from benchmarks import wrk
from benchmarks.fixtures import bench_conversations
from benchmarks.processes import api_server, bench_env, cpu_of_tree
from benchmarks.report import Progress, Report, drop_namespace, median

#: Client connections of the load.
CONNECTIONS = 16

#: Batch sizes measured (messages per request).
BATCH_SIZES = (1, 10, 100)


def run_ingress_batch(seconds: int, rounds: int, progress: Progress) -> Report:
    """Closed-loop messages per second: single POSTs (the baseline) and each batch size."""
    report = Report("ingress-batch")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = bench_env(STREAM_NAMESPACE=namespace)
    report.method = {
        "rounds": rounds,
        "seconds_per_run": seconds,
        "server": "gunicorn, 2 sync workers",
        "load": f"wrk -t2 -c{CONNECTIONS} closed loop; each batch's messages spread over 100 conversations, "
        "each with its own client_message_id; rounds alternate single POSTs and the batch sizes",
        "what": "acknowledged messages per second (requests/s x messages per request, non-2xx excluded)",
    }
    systems = [("single", "/api/v1/messages", 0)] + [
        (f"batch_{size}", "/api/v1/messages/batch", size) for size in BATCH_SIZES
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in systems}
    try:
        with bench_conversations() as (sender, conversations), api_server(env) as (port, server):
            token = Token.objects.create(user=sender).key
            with tempfile.TemporaryDirectory() as folder:
                for r in range(rounds):
                    for name, url, batch in systems:
                        progress(f"ingress-batch round {r + 1}/{rounds}: {name}")
                        script = Path(folder) / f"{name}.lua"
                        wrk.write_script(script, token, conversations, url, batch=batch)
                        cpu0 = cpu_of_tree(server.pid)
                        result = wrk.run(port, script, seconds, CONNECTIONS)
                        per_request = max(1, batch)
                        result["messages_per_s"] = (
                            result["per_s"] - result["errors"] / seconds
                        ) * per_request
                        result["server_cpu_ms_per_message"] = (
                            (cpu_of_tree(server.pid) - cpu0)
                            * 1000
                            / max(1.0, result["messages_per_s"] * seconds)
                        )
                        results[name].append(result)
                        report.rounds.append({"system": name, **result})
    finally:
        drop_namespace(namespace)
    single = median([r["messages_per_s"] for r in results["single"]])
    figures: dict[str, float] = {"single_per_s": round(single)}
    for size in BATCH_SIZES:
        rate = median([r["messages_per_s"] for r in results[f"batch_{size}"]])
        figures[f"batch_{size}_per_s"] = round(rate)
        figures[f"batch_{size}_ratio"] = round(rate / single, 2) if single else 0.0
        figures[f"batch_{size}_p99_ms"] = round(
            median([r.get("p99_ms", 0.0) for r in results[f"batch_{size}"]]), 2
        )
    figures["single_cpu_ms_per_message"] = round(
        median([r["server_cpu_ms_per_message"] for r in results["single"]]), 3
    )
    figures["batch_100_cpu_ms_per_message"] = round(
        median([r["server_cpu_ms_per_message"] for r in results["batch_100"]]), 3
    )
    report.figures = figures
    return report
