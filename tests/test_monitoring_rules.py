"""Checks of monitoring/: Prometheus rules (with promtool), scrape config, Grafana dashboard, runbooks.

No Django and no database: plain functions over the files in the repository.
promtool comes from Debian's `prometheus` package; without it these tests fail, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "monitoring" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "monitoring" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "phase3-queue-dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"

# SPEC section 8, names exactly as exposed (counters with their `_total` suffix).
SPEC_METRICS = frozenset(
    {
        "stream_enqueue_total",
        "stream_dequeue_total",
        "stream_partition_lag",
        "stream_processing_duration_ms",
        "stream_dead_letter_total",
        "stream_idempotent_hit_total",
        "idempotency_hit_total",
        "idempotency_ingress_duration_ms",
        "idempotency_persistence_duration_ms",
        "stream_consumer_processed_total",
        "stream_consumer_processing_duration_ms",
        "stream_consumer_dlq_total",
    }
)
# Series that Prometheus itself (up) or every prometheus_client process provides.
STANDARD_METRICS = frozenset({"up", "process_start_time_seconds"})

EXPECTED_ALERTS = frozenset(
    {
        "QueuePartitionLagHigh",
        "QueueDLQRateHigh",
        "IdempotentHitRatioHigh",
        "WorkersDown",
        "WorkersRestarting",
    }
)
EXPECTED_ROWS = [
    "Throughput",
    "Lag & Latency",
    "Errors",
    "Consumer Health",
    "Ingress & Persistence",
    "Summary Stats",
]

PROMQL_WORDS = frozenset(
    {
        # aggregation operators and modifiers
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
        "topk", "quantile", "by", "without", "on", "ignoring", "group_left", "group_right",
        # binary operators, modifiers, literals
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
        # functions
        "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
        "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
        "floor", "histogram_quantile", "histogram_count", "histogram_sum", "histogram_fraction",
        "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
        "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round", "scalar",
        "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year",
        "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
        "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
        "present_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin",
        "sinh", "tan", "tanh", "deg", "rad", "pi",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# An identifier followed by `{`, `[`, `)`, whitespace or the end of the expression.
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?=[{\[)\s]|$)")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression."""
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(r"\1", text)  # label lists of by (...), on (...), ...
    text = _MATCHERS.sub("{}", text)  # label matchers
    text = _RANGE.sub("[]", text)  # ranges and subqueries
    names = set()
    for name in _IDENTIFIER.findall(text):
        if name.lower() in PROMQL_WORDS:
            continue
        names.add(_HISTOGRAM_SUFFIX.sub("", name))
    return names


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


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels folded into a collapsed row
    return panels


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in _all_panels(_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
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
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(_dashboard_exprs())
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
    assert {rule["alert"] for rule in _alert_rules()} == EXPECTED_ALERTS
    assert firing >= EXPECTED_ALERTS, f"no firing case for {sorted(EXPECTED_ALERTS - firing)}"
    assert quiet >= EXPECTED_ALERTS, f"no quiet case for {sorted(EXPECTED_ALERTS - quiet)}"


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_layout() -> None:
    dashboard = _dashboard()
    panels = _all_panels(dashboard)
    rows = [panel for panel in panels if panel["type"] == "row"]
    others = [panel for panel in panels if panel["type"] != "row"]

    assert [row["title"] for row in rows] == EXPECTED_ROWS
    assert len(others) == 14
    assert {panel["type"] for panel in others} <= {"timeseries", "stat"}
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    for panel in others:
        exprs = [target.get("expr") for target in panel.get("targets", []) if target.get("expr")]
        assert exprs, f"panel {panel['title']!r} has no target with an expr"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_settings() -> None:
    dashboard = _dashboard()
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
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_dashboard_uses_only_spec_metrics_and_shows_all_of_them() -> None:
    used = set().union(*(metric_names(expr) for expr in _dashboard_exprs()))
    assert used <= SPEC_METRICS | STANDARD_METRICS, f"unknown metrics: {sorted(used - SPEC_METRICS)}"
    assert used >= SPEC_METRICS, f"metrics on no panel: {sorted(SPEC_METRICS - used)}"


def test_alerts_use_only_spec_metrics() -> None:
    allowed = SPEC_METRICS | STANDARD_METRICS
    for rule in _alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= allowed, f"{rule['alert']}: unknown metrics {sorted(used - allowed)}"


# ----------------------------------------------------------------------------- runbooks


def test_alerts_are_annotated_and_point_at_existing_runbook_sections() -> None:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOKS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    anchors = {_github_anchor(heading) for heading in headings}
    for rule in _alert_rules():
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {sorted(anchors)}"
