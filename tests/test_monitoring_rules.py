"""Checks of monitoring/: Prometheus rules (with promtool), scrape config, Grafana dashboard, runbooks.

No Django and no database: plain functions over the files in the repository.
promtool comes from Debian's `prometheus` package; without it these tests fail, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql import (
    ALERTS,
    DASHBOARD,
    PROJECT_METRICS,
    REPO,
    SPEC_METRICS,
    STANDARD_METRICS,
    alert_exprs,
    alert_rules,
    all_panels,
    dashboard_exprs,
    load_dashboard,
    metric_names,
)

ALERTS_TEST = REPO / "monitoring" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"

EXPECTED_ALERTS = frozenset(
    {
        "QueuePartitionLagHigh",
        "QueueDLQRateHigh",
        "IdempotentHitRatioHigh",
        "WorkersDown",
        "WorkersRestarting",
        "DeadLetterMirrorStuck",
    }
)
EXPECTED_ROWS = [
    "Throughput",
    "Lag & Latency",
    "Errors",
    "Consumer Health",
    "Ingress & Persistence",
    "Summary Stats",
    "Per-Key Order",
]
#: The seed's 14 panels (SPEC section 8), then ours for per-key order.
SEED_PANELS = 14
PER_KEY_PANELS = frozenset(
    {"Blocked Conversations", "Look-Ahead", "Look-Ahead Full", "Crashed-Worker Dead Letters"}
)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's prometheus package "
            "(apt-get install -y prometheus) for promtool"
        )
    return path


def _run_promtool(*args: str) -> None:
    result = subprocess.run(
        [_promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def _github_anchor(heading: str) -> str:
    slug = heading.strip().lower().replace("`", "")
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


# ----------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", str(ALERTS.relative_to(REPO)))


def test_promtool_rule_unit_tests() -> None:
    _run_promtool("test", "rules", str(ALERTS_TEST.relative_to(REPO)))


def test_promtool_check_config() -> None:
    _run_promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(REPO)))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses: promtool checks them as recording rules."""
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(dashboard_exprs())
    ]
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    _run_promtool("check", "rules", str(rules_file))


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS
    assert firing >= EXPECTED_ALERTS, f"no firing case for {sorted(EXPECTED_ALERTS - firing)}"
    assert quiet >= EXPECTED_ALERTS, f"no quiet case for {sorted(EXPECTED_ALERTS - quiet)}"


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_layout() -> None:
    dashboard = load_dashboard()
    panels = all_panels(dashboard)
    rows = [panel for panel in panels if panel["type"] == "row"]
    others = [panel for panel in panels if panel["type"] != "row"]

    assert [row["title"] for row in rows] == EXPECTED_ROWS
    assert len(others) == SEED_PANELS + len(PER_KEY_PANELS)
    assert {panel["title"] for panel in others[SEED_PANELS:]} == PER_KEY_PANELS
    assert {panel["type"] for panel in others} <= {"timeseries", "stat"}
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    for panel in others:
        exprs = [target.get("expr") for target in panel.get("targets", []) if target.get("expr")]
        assert exprs, f"panel {panel['title']!r} has no target with an expr"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_settings() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "phase3-queue"
    assert dashboard["title"] == "Phase 3 \u2014 Durable Delivery Backbone"
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert dashboard["schemaVersion"] >= 36
    assert "__inputs" not in dashboard
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


# ----------------------------------------------------------------------------- metric names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "histogram_quantile(0.95, sum by (le, partition) "
            "(rate(stream_consumer_processing_duration_ms_bucket[5m])))",
            {"stream_consumer_processing_duration_ms"},
        ),
        (
            'sum(rate(idempotency_hit_total{operation="ingress", source=~"a|b"}[5m])) > 0.1',
            {"idempotency_hit_total"},
        ),
        ("max by (partition, consumer_group) (stream_partition_lag) > 1000", {"stream_partition_lag"}),
        ("sum(stream_enqueue_total) or vector(0)", {"stream_enqueue_total"}),
        ('absent(up{job="w"} == 1) or sum(up{job="w"}) == 0', {"up"}),
        ("some_metric", {"some_metric"}),
        ("a_total / on (x) group_left (y) b_count", {"a_total", "b"}),
        (
            'increase(stream_worker_restarts_total{job="w"}[10m]) > 5 '
            'or changes(process_start_time_seconds{job="w"}[10m]) > 5',
            {"stream_worker_restarts_total", "process_start_time_seconds"},
        ),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_shared_helpers_read_the_monitoring_files() -> None:
    """tests.promql (also used by the acceptance tests) finds every query of both files."""
    dashboard = load_dashboard()
    targets = [target for panel in all_panels(dashboard) for target in panel.get("targets", [])]
    assert DASHBOARD.is_file() and ALERTS.is_file()
    assert dashboard_exprs() == [target["expr"] for target in targets if target.get("expr")]
    assert len(dashboard_exprs()) >= 14
    assert alert_exprs() == [rule["expr"] for rule in alert_rules()]
    assert len(alert_exprs()) == len(EXPECTED_ALERTS)
    assert not (PROJECT_METRICS & (SPEC_METRICS | STANDARD_METRICS))


def test_dashboard_uses_only_spec_metrics_and_shows_all_of_them() -> None:
    """Every SPEC metric is on a panel; nothing but SPEC, standard and the project's extra metrics is."""
    allowed = SPEC_METRICS | STANDARD_METRICS | PROJECT_METRICS
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert used <= allowed, f"unknown metrics: {sorted(used - allowed)}"
    assert used >= SPEC_METRICS, f"metrics on no panel: {sorted(SPEC_METRICS - used)}"


def test_alerts_use_only_spec_metrics() -> None:
    """Alerts query SPEC metrics, standard ones (up, process_*) and the project's extra metrics only."""
    allowed = SPEC_METRICS | STANDARD_METRICS | PROJECT_METRICS
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= allowed, f"{rule['alert']}: unknown metrics {sorted(used - allowed)}"


# ----------------------------------------------------------------------------- runbooks


def _runbook_sections() -> dict[str, str]:
    """docs/runbooks.md by section: anchor -> the section's text (up to the next heading of
    the same or a higher level)."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    headings = list(re.finditer(r"^(#{1,6})\s+(.+?)\s*$", text, flags=re.MULTILINE))
    sections = {}
    for i, heading in enumerate(headings):
        level = len(heading.group(1))
        end = next((h.start() for h in headings[i + 1 :] if len(h.group(1)) <= level), len(text))
        sections[_github_anchor(heading.group(2))] = text[heading.start() : end]
    return sections


def test_alerts_are_annotated_and_point_at_existing_runbook_sections() -> None:
    sections = _runbook_sections()
    for rule in alert_rules():
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", rule["alert"]
        assert anchor in sections, f"{rule['alert']}: no heading for #{anchor} in {sorted(sections)}"
        assert f"`{rule['alert']}`" in sections[anchor], f"#{anchor} does not name {rule['alert']}"
