"""PromQL helpers shared by tests: metric names of expressions, and the project's dashboard and alerts.

A plain module (no tests here): `tests/test_monitoring_rules.py` checks the monitoring files with it,
acceptance tests compare the names queried there with what the real processes export.
No Django and no database.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "monitoring" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "phase3-queue-dashboard.json"

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
# Metrics the project exports beyond SPEC section 8.
PROJECT_METRICS = frozenset(
    {
        "stream_worker_restarts_total",
        "stream_partition_undelivered",
        "stream_partition_oldest_pending_age_ms",
        "stream_dead_letters",
        "stream_partition_blocked_keys",
        "stream_partition_lookahead",
        "stream_lookahead_full_total",
        "delivery_dead_letter_mirror_lag_ms",
        "delivery_dead_letters_unmirrored",
    }
)

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
    """Metric names referenced by a PromQL expression (histogram series by their base name)."""
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


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, rows included, with the panels folded into collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels folded into a collapsed row
    return panels


def dashboard_exprs() -> list[str]:
    """The PromQL expression of every dashboard panel target, in panel order."""
    return [
        target["expr"]
        for panel in all_panels(load_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules (not recording rules) of every group in alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_exprs() -> list[str]:
    """The PromQL expression of every alerting rule, in file order."""
    return [rule["expr"] for rule in alert_rules()]
