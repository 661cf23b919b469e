"""The Grafana dashboards in git query only metric names the service really exports.

Every PromQL expression of every dashboard under ``apps/monitoring/`` is reduced to the metric
names it selects, and each must be a sample name on the ``/metrics`` page scraped from a real
``bentoml serve`` that has answered both prediction routes, writes a prediction log and has a
live report for the version it serves.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml.features import FEATURE_COLUMNS
from tests.serving.live_support import answer, live_report, samples, wait_for, write_report
from tests.support import REPO_ROOT, register_tiny_version, start_service

MONITORING = REPO_ROOT / "apps" / "monitoring"

# PromQL words that are not metric names (functions are recognised by the "(" after them).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, strings, numbers ignored)."""
    names = set(_NAME_MATCHER.findall(expr))
    for pattern in (_STRINGS, _GRAFANA_VARIABLE, _LABEL_MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    for name, call in _IDENTIFIER.findall(expr):
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def variable_query_expr(query: str) -> str:
    """The PromQL inside a Grafana variable query (``label_values(expr, label)``, ``query_result(expr)``)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query) or re.fullmatch(
        r"\s*(?:label_values|query_result)\((.*)\)\s*", query)
    return m.group(1) if m else query


def dashboard_exprs(dashboard: Any) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' panels too) and variable queries."""
    if isinstance(dashboard, dict):
        for key, value in dashboard.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "templating":
                for variable in value.get("list", []):
                    query = variable.get("query")
                    query = query.get("query") if isinstance(query, dict) else query
                    if variable.get("type") == "query" and isinstance(query, str):
                        yield variable_query_expr(query)
            else:
                yield from dashboard_exprs(value)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from dashboard_exprs(item)


def dashboards(root: Path) -> list[Path]:
    """The Grafana dashboards under ``root`` (JSON files with panels)."""
    found = []
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "panels" in data:
            found.append(path)
    return found


def unexported(paths: Iterable[Path], exported: set[str]) -> dict[str, list[str]]:
    """Per dashboard, the metric names its queries use that ``exported`` lacks."""
    missing = {}
    for path in paths:
        used = {name for expr in dashboard_exprs(json.loads(path.read_text())) for name in metric_names(expr)}
        if used - exported:
            missing[path.name] = sorted(used - exported)
    return missing


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (route, model_version) (rate(primer_predictions_total{route!="other"}[5m]))',
     {"primer_predictions_total"}),
    ('histogram_quantile(0.95, sum by (le) (rate(x_bucket{route="a{b}"}[$__rate_interval])))', {"x_bucket"}),
    ("time() - max(primer_live_report_timestamp_seconds) > bool 3600", {"primer_live_report_timestamp_seconds"}),
    ("a / on (instance) group_left (job) b offset 5m unless c @ start()", {"a", "b", "c"}),
    ('max(x{model_version=~"$version"}) * 1e-3 + Inf', {"x"}),
    ('sum(rate(a:recorded[1h:5m])) without (pid) or {__name__="d"}', {"a:recorded", "d"}),
    ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up"}),
])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_variable_queries_give_their_expression() -> None:
    assert variable_query_expr("label_values(primer_served_model_version, model_version)") == \
        "primer_served_model_version"
    assert variable_query_expr("query_result(max(x))") == "max(x)"


@pytest.mark.slow
def test_every_metric_a_dashboard_queries_is_on_the_services_metrics(mlflow_server: Any, tmp_path: Path) -> None:
    from ml.tracking import Tracker

    found = dashboards(MONITORING)
    assert found, f"no Grafana dashboard (JSON with panels) under {MONITORING}: nothing would be checked"

    version, _ = register_tiny_version(mlflow_server.uri, Tracker(mlflow_server.uri).experiment_id("dashboards"))
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    write_report(url, live_report(version, 30))
    with start_service(tmp_path / "svc", mlflow_server.uri, version, PRIMER_PREDICTION_LOG=url,
                       PRIMER_LIVE_REFRESH_SECONDS="0.5") as svc:
        answer(svc, version)
        assert svc.post("/predict", json={"rows": [dict.fromkeys(FEATURE_COLUMNS, 0.0)]}).status_code == 200
        svc.wait_model(lambda m: m["prediction_log"]["written"] >= 1 and m["live"]["scored_days"] == 30,
                       what="a written answer and the live report")
        wait_for(svc, lambda: "primer_live_scored_days" in svc.get("/metrics").text, "the live report on /metrics")
        exported = {name for name, _, _ in samples(svc.get("/metrics").text)}

    assert unexported(found, exported) == {}, f"exported: {sorted(exported)}"

    # The check fails on a dashboard naming a metric the service does not export (a copy, edited).
    copy = tmp_path / "edited" / found[0].name
    copy.parent.mkdir()
    shutil.copy(found[0], copy)
    expr = next(dashboard_exprs(json.loads(copy.read_text())))
    name = sorted(metric_names(expr))[0]
    copy.write_text(copy.read_text().replace(json.dumps(expr)[1:-1], json.dumps(
        expr.replace(name, name + "_typo"))[1:-1], 1))
    assert unexported([copy], exported) == {copy.name: [name + "_typo"]}
