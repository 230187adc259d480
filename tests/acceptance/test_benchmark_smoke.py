"""``manage.py benchmark``: each scenario runs small and prints sane figures (not a speed test)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from django.db import connection

from delivery.models import Conversation, Message
from messaging_project import launch
from tests.conftest import project_subprocess

pytestmark = pytest.mark.acceptance

SMOKE = {
    "broker": ["--messages", "300", "--rounds", "1", "--threads", "4"],
    "persist": ["--messages", "400", "--rounds", "1", "--threads", "4", "--participants", "2,5"],
    "ingress": ["--seconds", "1", "--rounds", "1"],
    "e2e": ["--messages", "100", "--rate", "100"],
    "takeover": ["--rounds", "1"],
    "receipts": ["--seconds", "1", "--rounds", "1", "--participants", "2,5"],
    "keys": ["--messages", "200", "--rounds", "1", "--threads", "4", "--keys", "1,256"],
    "scaling": [
        "--messages",
        "30000",
        "--rounds",
        "1",
        "--threads",
        "4",
        "--processes",
        "1,2",
        "--window",
        "0.5",
    ],
    "peers": ["--messages", "200", "--rounds", "1", "--threads", "4"],
    "hol": ["--messages", "10", "--rounds", "1", "--threads", "4", "--fail-seconds", "2"],
    "cluster": ["--messages", "300", "--rounds", "1", "--threads", "4"],
}

EXPECTED_KEYS = {
    "broker": {"enqueue_per_s", "consume_per_s", "baseline_enqueue_per_s", "baseline_consume_per_s",
               "enqueue_ratio", "consume_ratio"},
    "persist": {"persist_per_s", "baseline_per_s", "ratio"},
    "ingress": {"ingress_per_s", "baseline_per_s", "ratio", "p50_ms", "p99_ms"},
    "e2e": {"offered_per_s", "achieved_per_s", "p50_ms", "p95_ms", "p99_ms"},
    "takeover": {"takeover_s"},
    "receipts": {"updates_per_s", "baseline_per_s", "ratio", "statements_per_update",
                 "updates_per_s_5_members", "statements_per_update_5_members"},
    "keys": {f"{system}_per_s_{n}_keys" for system in ("ordered", "unordered", "stock") for n in (1, 256)}
            | {f"ordered_vs_{other}_{n}_keys" for other in ("unordered", "stock") for n in (1, 256)},
    "scaling": {"steady_per_s_1_processes", "steady_per_s_2_processes", "ratio_2_vs_1",
                "join_to_even_s_2_processes", "unmoved_max_gap_s_2_processes"},
    "peers": {f"ours_{figure}" for figure in ("consume_per_s", "enqueue_per_s", "consume_cpu_us_per_job")}
             | {"dramatiq_consume_per_s", "ours_consume_vs_dramatiq"},
    "hol": {"failing_key_s", "same_partition_max_s", "other_partitions_max_s", "delay_s",
            "partition_order_same_partition_max_s", "partition_order_delay_s"},
    "cluster": {"enqueue_per_s", "consume_per_s", "baseline_enqueue_per_s", "baseline_consume_per_s",
                "enqueue_ratio", "consume_ratio", "idle_cmds_per_s", "baseline_idle_cmds_per_s"},
}  # fmt: skip

#: Memory figures (MB of peak resident memory; bytes of Redis memory per queued message).
MEMORY_KEYS = {
    "broker": {"process_peak_rss_mb", "redis_bytes_per_message", "baseline_redis_bytes_per_message"},
    "persist": {"process_peak_rss_mb"},
    "ingress": {"api_peak_rss_mb"},
    "e2e": {"api_peak_rss_mb", "workers_peak_rss_mb"},
    "takeover": set(),
    "receipts": {"api_peak_rss_mb"},
    "keys": set(),
    "hol": set(),
    "scaling": set(),
    "peers": set(),
    "cluster": set(),
}


#: The peers scenario's systems and the package each needs.
PEER_PACKAGES = {"taskiq": "taskiq_redis", "celery": "celery", "procrastinate": "procrastinate",
                 "procrastinate_lock": "procrastinate"}  # fmt: skip


def run_benchmark(scenario: str, redis_url: str) -> dict[str, Any]:
    db = connection.settings_dict
    env = {
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "messaging_project.settings",
        "LOG_LEVEL": "WARNING",
    }
    process = project_subprocess(
        launch.manage_argv("benchmark", scenario, *SMOKE[scenario], "--json"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


@pytest.mark.parametrize("scenario", list(SMOKE))
def test_benchmark_scenario_prints_sane_figures_and_cleans_up(
    scenario, transactional_db, redis_client, redis_url
):
    report = run_benchmark(scenario, redis_url)

    assert report["scenario"] == scenario
    assert EXPECTED_KEYS[scenario] <= set(report)
    for key in EXPECTED_KEYS[scenario]:
        assert isinstance(report[key], (int, float)) and report[key] >= 0, (key, report[key])
    assert report["method"] and report["versions"]["redis"]
    for key in MEMORY_KEYS[scenario]:
        assert 0 < report[key] < 100_000, (key, report.get(key))
    if scenario == "takeover":
        assert 0 < report["takeover_s"] < 30
    elif scenario == "broker":
        assert report["enqueue_per_s"] > 0 and report["consume_per_s"] > 0
    elif "ratio" in report:
        assert report["ratio"] > 0
    if scenario == "persist":
        assert report["persist_per_s_5_members"] > 0 and report["time_5_vs_2_members"] > 0
    if scenario == "keys":
        assert all(report[key] > 0 for key in EXPECTED_KEYS["keys"])
    if scenario == "scaling":
        assert report["steady_per_s_1_processes"] > 0 and report["steady_per_s_2_processes"] > 0
        assert report["rounds"][1]["partitions_moved"] == 8  # half of the 16 partitions went to the newcomer
    if scenario == "peers":
        # Every peer is measured or named as missing (the [bench] extra is optional).
        for name, package in PEER_PACKAGES.items():
            assert f"{name}_consume_per_s" in report or package in report["missing"], name
        assert report["missing"] == (", ".join(report["method"]["missing"]) or "none")
    if scenario == "hol":
        # The failing key finished only after its 2 s of failures (times count from the first
        # finished job, a little after its first failure); under partition order its partition's
        # other keys waited for it, under key order they did not.
        assert report["failing_key_s"] > 1.5 and report["partition_order_same_partition_max_s"] > 1.5
        assert report["same_partition_max_s"] < 1.5
    if scenario == "cluster":  # idle: a cluster polls, one node blocks (a few commands a second)
        assert report["idle_cmds_per_s"] > report["baseline_idle_cmds_per_s"]
    if scenario == "receipts":
        assert report["statements_per_update"] == report["statements_per_update_5_members"] == 1
    # it removed what it made
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0
    assert redis_client.keys("*bench-*") == []


def test_benchmark_says_clearly_when_redis_is_unreachable(transactional_db):
    db = connection.settings_dict
    process = project_subprocess(
        launch.manage_argv("benchmark", "broker"),
        env={"DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
             "REDIS_URL": "redis://127.0.0.1:1/0", "DJANGO_SETTINGS_MODULE": "messaging_project.settings"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"Redis at redis://127.0.0.1:1/0 is not reachable" in err
