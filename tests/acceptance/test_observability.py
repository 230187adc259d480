"""Metrics and logs of the real API server and workers, for a known workload."""

from __future__ import annotations

import http.client
import json
import uuid
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from delivery.models import DeadLetter, Message
from tests.acceptance import harness
from tests.acceptance.conftest import Stack
from tests.acceptance.harness import LoadGenerator
from tests.conftest import wait_for
from tests.promql import STANDARD_METRICS, alert_exprs, dashboard_exprs, metric_names

pytestmark = pytest.mark.acceptance

NEW = 100
DUPLICATES = 10
POISON = 2


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def scrape(port: int, path: str = "/metrics") -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, summed over any duplicates."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples[sample.name][key] = samples[sample.name].get(key, 0.0) + sample.value
    return samples


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if wanted <= set(key))


def test_metrics_and_logs_report_a_known_workload(
    stack: Stack, services: list[harness.Service], poison_trigger: Any
) -> None:
    env = stack.env(STREAM_MAX_RETRIES="0")
    api, port = harness.api_server(env, stack.log_dir)
    workers = harness.workers(env, stack.log_dir, processes=2)
    services += [api, workers]
    metrics_port = int(env["METRICS_PORT"])
    gen = LoadGenerator(port, stack.token)

    keys = []
    for i in range(NEW + POISON):
        conversation = stack.conversations[i % 5]
        key = uuid.uuid4().hex
        content = f"poison {i} POISON" if i < POISON else f"message {i}"
        status, _ = gen.post(
            "/api/v1/messages",
            {"conversation_id": conversation, "content": content},
            {"Idempotency-Key": key, "X-Correlation-ID": f"corr-{i}"},
        )
        assert status == 202
        keys.append((conversation, content, key))
    for conversation, content, key in keys[POISON : POISON + DUPLICATES]:
        status, body = gen.post(
            "/api/v1/messages",
            {"conversation_id": conversation, "content": content},
            {"Idempotency-Key": key},
        )
        assert status == 200 and body["idempotent_hit"] is True

    harness.wait_until_persisted(NEW)
    wait_for(lambda: DeadLetter.objects.count() == POISON, timeout=60, what="mirrored dead letters")
    wait_for(
        lambda: total(scrape(metrics_port), "stream_partition_lag") == 0, timeout=30, what="lag back to zero"
    )
    api_samples, worker_samples = scrape(port), scrape(metrics_port)

    # Every metric the dashboard and the alert rules query exists in what was scraped.
    scraped = set(api_samples) | set(worker_samples)
    scraped |= {name.rsplit("_", 1)[0] for name in scraped if name.endswith(("_bucket", "_sum", "_count"))}
    used = set().union(*(metric_names(e) for e in dashboard_exprs() + alert_exprs())) - STANDARD_METRICS
    assert used - scraped == set()
    assert "process_start_time_seconds" in worker_samples

    # Counters moved by exactly the workload.
    assert total(api_samples, "stream_enqueue_total") == NEW + POISON
    assert total(api_samples, "stream_enqueue_total", priority="normal") == NEW + POISON
    assert total(api_samples, "stream_idempotent_hit_total") == DUPLICATES
    assert total(api_samples, "idempotency_hit_total", operation="ingress", source="cache") == DUPLICATES
    assert total(api_samples, "idempotency_ingress_duration_ms_count", status="accepted") == NEW + POISON
    assert total(api_samples, "idempotency_ingress_duration_ms_count", status="duplicate") == DUPLICATES
    assert total(worker_samples, "stream_consumer_processed_total", status="success") == NEW
    assert total(worker_samples, "stream_consumer_processed_total", status="dead_lettered") == POISON
    assert total(worker_samples, "stream_dead_letter_total") == POISON
    assert total(worker_samples, "stream_dead_letter_total", reason="max_retries") == POISON
    assert total(worker_samples, "stream_consumer_dlq_total") == POISON
    assert total(worker_samples, "stream_dequeue_total", consumer_group="messages") >= NEW + POISON
    assert total(worker_samples, "stream_processing_duration_ms_count") >= 1
    assert total(worker_samples, "idempotency_persistence_duration_ms_count", status="success") >= 1
    assert total(worker_samples, "stream_worker_restarts_total") == 0
    assert Message.objects.count() == NEW

    # Logs: one JSON object per line, with the message's context where known.
    for service in (api, workers):
        lines = [line for line in service.log_lines() if line.strip()]
        assert lines, f"{service.name} logged nothing"
        not_json = [line for line in lines if not _is_json_object(line)]
        assert not_json == [], f"{service.name} logged lines that are not JSON"
        records = [json.loads(line) for line in lines]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    persisted = [json.loads(line) for line in workers.log_lines() if "Persisted message" in line]
    traced = [r for r in persisted if r.get("correlation_id") == f"corr-{POISON + 3}"]
    assert len(traced) == 1
    record = traced[0]
    assert record["conversation_id"] == keys[POISON + 3][0]
    assert {"message_id", "partition", "attempt"} <= set(record)
    dead = [json.loads(line) for line in workers.log_lines() if "Dead-lettered" in line]
    assert len(dead) == POISON
