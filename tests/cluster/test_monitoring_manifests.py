"""Cross-checks for monitoring in the lab (issue 13): apps/monitoring's Prometheus and Grafana,
what they scrape and show, the prediction log's wiring and the one replay clock that training,
`primer monitor` and serving follow. Names, ports, labels and env vars must agree between the
manifests, versions.env, platform.sh, access.sh, docs/cluster.md and the code's contracts."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from contract import live_report, names
from tests.cluster.support import REPO, containers, find

DASHBOARD = REPO / "apps" / "monitoring" / "grafana" / "dashboards" / "primer.json"
# The service's own series (bentos/service.py) as Prometheus stores them: counters get _total,
# histograms _bucket/_sum/_count.
SERVICE_SERIES = {"primer_predictions_total", "primer_prediction_duration_seconds_bucket",
                  "primer_prediction_duration_seconds_sum", "primer_prediction_duration_seconds_count",
                  "primer_prediction_log_written_total", "primer_prediction_log_dropped_total",
                  "primer_prediction_log_pending"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "rate", "increase", "by", "without", "histogram_quantile", "time",
                "le", "on", "ignoring", "and", "or", "unless", "count"}


def _container(apps, app: str, kind: str, name: str, container: str) -> dict[str, Any]:
    spec = next(c for c in containers({app: apps[app]}) if c.source == f"{app} {kind}/{name}"
                and c.spec["name"] == container)
    return spec.spec


def _env(apps, app: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: envFrom ConfigMaps of the render resolved to their data, env
    entries as their value or their valueFrom reference."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in apps[app] if o["kind"] == "ConfigMap"}
    env: dict[str, Any] = {}
    for ref in spec.get("envFrom", []):
        env.update(configmaps[ref["configMapRef"]["name"]])
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


# --- one replay clock ---------------------------------------------------------------------------

CLOCK = ("PRIMER_MODE", "PRIMER_REPLAY_START", "PRIMER_REPLAY_INTERVAL_SECONDS", "PRIMER_REPLAY_EPOCH")


def _clocks(apps) -> dict[str, dict[str, Any]]:
    return {
        "train": _env(apps, "apps/training", _container(apps, "apps/training", "CronJob", "primer-train", "train")),
        "monitor": _env(apps, "apps/training", _container(apps, "apps/training", "CronJob", "primer-train",
                                                          "monitor")),
        "serving": _env(apps, "apps/serving", _container(apps, "apps/serving", "Deployment", "primer-serving",
                                                         "serving")),
    }


def test_training_monitor_and_serving_follow_the_same_replay_clock(apps) -> None:
    clocks = _clocks(apps)
    first = {k: clocks["train"].get(k) for k in CLOCK}
    assert first["PRIMER_MODE"] == "replay"
    assert first["PRIMER_REPLAY_EPOCH"] == {"configMapKeyRef": {"name": "replay-clock", "key": "PRIMER_REPLAY_EPOCH"}}
    for who, env in clocks.items():
        assert {k: env.get(k) for k in CLOCK} == first, f"{who} runs on another clock"
    # One copy in git: the settings live in the shared Component only, not in an app's own files.
    for app in ("training", "serving"):
        for path in (REPO / "apps" / app).glob("*.yaml"):
            for key in CLOCK[:3]:
                assert not re.search(rf"^\s*-?\s*(name: )?{key}\b", path.read_text(), flags=re.M), f"{path}: {key}"
    # One simulated trading day per training run.
    cron = find(apps["apps/training"], "CronJob", "primer-train")["spec"]["schedule"]
    minutes = re.fullmatch(r"\*/(\d+) \* \* \* \*", cron)
    assert minutes and int(minutes.group(1)) * 60 == int(str(first["PRIMER_REPLAY_INTERVAL_SECONDS"]))


def test_the_replay_epoch_is_one_value_in_both_namespaces() -> None:
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    created = script.index("kubectl -n training create configmap replay-clock")
    read = script.index("epoch=$(kubectl -n training get configmap replay-clock "
                        "-o jsonpath='{.data.PRIMER_REPLAY_EPOCH}')")
    copied = script.index('kubectl -n serving create configmap replay-clock --dry-run=client -o yaml \\\n'
                          '  --from-literal=PRIMER_REPLAY_EPOCH="$epoch" | kubectl apply -f -')
    assert created < read < copied
    # The copy is rewritten on every run (apply), not only when missing: the two never differ.
    guard = script.rfind("if ", 0, copied)
    assert script.rfind("fi\n", guard, copied) != -1


def test_the_clock_component_is_shared_by_training_and_serving() -> None:
    for app in ("training", "serving"):
        kust = yaml.safe_load((REPO / "apps" / app / "kustomization.yaml").read_text())
        assert "../components/replay" in kust["components"], app
    comp = yaml.safe_load((REPO / "apps" / "components" / "replay" / "kustomization.yaml").read_text())
    assert comp["kind"] == "Component"
    (gen,) = comp["configMapGenerator"]
    assert gen["name"] == "primer-replay"
    assert {entry.split("=", 1)[0] for entry in gen["literals"]} == set(CLOCK[:3])


# --- the prediction log ------------------------------------------------------------------------

def test_serving_and_the_monitor_read_the_log_url_from_the_bootstrap_secret(apps, lab) -> None:
    ref = {"name": "prediction-log", "key": "PRIMER_PREDICTION_LOG"}
    serving = _container(apps, "apps/serving", "Deployment", "primer-serving", "serving")
    monitor = _container(apps, "apps/training", "CronJob", "primer-train", "monitor")
    env = {e["name"]: e for e in serving["env"]}
    assert env["PRIMER_PREDICTION_LOG"]["valueFrom"]["secretKeyRef"] == ref
    # Optional for the monitor: a missing Secret is a warning (--warn-only), never a blocked training run.
    env = {e["name"]: e for e in monitor["env"]}
    assert env["PRIMER_PREDICTION_LOG"]["valueFrom"]["secretKeyRef"] == {**ref, "optional": True}
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    assert 'for ns in serving training; do\n  kubectl -n "$ns" create secret generic prediction-log' in script
    # The URL names the PostgreSQL Service of apps/mlflow and its port.
    svc = find(apps["apps/mlflow"], "Service", "postgres")
    assert lab["PREDICTION_LOG_HOST"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    port = svc["spec"]["ports"][0]["port"]
    assert f'@$PREDICTION_LOG_HOST:{port}/$PREDICTION_LOG_DB"' in script


def test_the_log_database_is_not_mlflows(lab) -> None:
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    mlflow = re.search(r"--from-literal=POSTGRES_USER=(\w+) --from-literal=POSTGRES_DB=(\w+)", script)
    assert mlflow, "platform.sh no longer names MLflow's role and database"
    assert lab["PREDICTION_LOG_USER"] not in mlflow.groups() and lab["PREDICTION_LOG_DB"] not in mlflow.groups()


def test_network_policies_let_the_log_clients_reach_postgres_only(apps) -> None:
    policy = find(apps["apps/mlflow"], "NetworkPolicy", "postgres-from-prediction-log-clients")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgres"}
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    namespaces, job = rule["from"]
    assert sorted(namespaces["namespaceSelector"]["matchExpressions"][0]["values"]) == ["serving", "training"]
    labels = find(apps["apps/mlflow"], "Job", "prediction-log-db")["spec"]["template"]["metadata"]["labels"]
    assert job == {"podSelector": {"matchLabels": labels}}


def test_the_monitor_runs_before_training_with_what_it_needs(apps) -> None:
    spec = find(apps["apps/training"], "CronJob", "primer-train")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-history", "monitor"]
    monitor = spec["initContainers"][1]
    assert monitor["command"] == ["primer", "monitor", "--warn-only"]
    env = _env(apps, "apps/training", monitor)
    train = _env(apps, "apps/training", spec["containers"][0])
    for key in ("MLFLOW_TRACKING_URI", "PRIMER_DATA_SOURCE", "PRIMER_FORGE_TOKEN", "PRIMER_GIT_REMOTE",
                "PRIMER_FORGE", "PRIMER_PIN_FILE", *CLOCK):
        assert env.get(key) == train.get(key), key
    mounts = {m["name"]: m["mountPath"] for m in monitor["volumeMounts"]}
    train_mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    for volume in ("history", "pin", "tmp"):
        assert mounts[volume] == train_mounts[volume], volume
    assert env["HOME"].startswith("/tmp/") and env["MPLCONFIGDIR"].startswith("/tmp/")


# --- Prometheus ---------------------------------------------------------------------------------

def _prometheus_config(apps) -> dict[str, Any]:
    (cm,) = [o for o in apps["apps/monitoring"] if o["kind"] == "ConfigMap"
             and o["metadata"]["name"].startswith("prometheus-config-")]
    return yaml.safe_load(cm["data"]["prometheus.yml"])


def test_prometheus_scrapes_every_serving_pod_every_15_seconds(apps) -> None:
    config = _prometheus_config(apps)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "primer-serving"]
    interval = job.get("scrape_interval", config["global"]["scrape_interval"])
    assert interval == "15s"
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    (name,) = sd["names"]
    assert sd["type"] == "A" and sd["port"] == names.SERVING_PORT
    headless = find(apps["apps/serving"], "Service", "primer-serving-pods")
    assert name == f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local"
    assert headless["spec"]["clusterIP"] == "None"
    dep = find(apps["apps/serving"], "Deployment", "primer-serving")
    assert headless["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["ports"][0]["port"] == names.SERVING_PORT


def test_prometheus_keeps_little_and_reads_its_config_from_git(apps) -> None:
    dep = find(apps["apps/monitoring"], "Deployment", "prometheus")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = dict(a.split("=", 1) for a in c["args"])
    assert args["--config.file"] == "/etc/prometheus/prometheus.yml"
    assert args["--storage.tsdb.retention.time"] == "7d" and args["--storage.tsdb.retention.size"] == "512MB"
    claim = find(apps["apps/monitoring"], "PersistentVolumeClaim", "prometheus-data")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"  # > retention.size, with room for the WAL
    assert not any(a.startswith(("--web.enable-admin-api", "--web.enable-lifecycle")) for a in c["args"])
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert mounted["/etc/prometheus"]["configMap"]["name"].startswith("prometheus-config-")
    assert mounted[args["--storage.tsdb.path"]]["persistentVolumeClaim"]["claimName"] == "prometheus-data"


def test_network_policies_admit_prometheus_to_serving_and_grafana_to_prometheus(apps) -> None:
    prometheus = find(apps["apps/monitoring"], "Deployment", "prometheus")["spec"]["template"]["metadata"]["labels"]
    grafana = find(apps["apps/monitoring"], "Deployment", "grafana")["spec"]["template"]["metadata"]["labels"]
    serving = find(apps["apps/serving"], "NetworkPolicy", "serving-from-clients")["spec"]
    scrape = serving["ingress"][0]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                               "podSelector": {"matchLabels": prometheus}}]
    assert scrape["ports"] == [{"protocol": "TCP", "port": names.SERVING_PORT}]
    query = find(apps["apps/monitoring"], "NetworkPolicy", "prometheus-from-clients")["spec"]["ingress"][0]
    assert query["from"] == [{"podSelector": {"matchLabels": grafana}}]
    svc = find(apps["apps/monitoring"], "Service", "prometheus")
    assert query["ports"] == [{"protocol": "TCP", "port": svc["spec"]["ports"][0]["port"]}]
    for app in ("apps/serving", "apps/monitoring"):
        deny = find(apps[app], "NetworkPolicy", "default-deny-ingress")["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}, app
    created = {o["metadata"]["name"] for o in apps["apps/platform"] if o["kind"] == "Namespace"}
    assert "monitoring" in created


# --- Grafana ----------------------------------------------------------------------------------

def test_grafana_provisions_the_datasource_and_the_dashboard_from_git(apps) -> None:
    objects = apps["apps/monitoring"]
    data = {o["metadata"]["name"].rsplit("-", 1)[0]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    (source,) = yaml.safe_load(data["grafana-datasources"]["datasources.yaml"])["datasources"]
    svc = find(objects, "Service", "prometheus")
    assert source["url"] == f"http://prometheus.monitoring.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    (provider,) = yaml.safe_load(data["grafana-dashboard-providers"]["dashboards.yaml"])["providers"]
    assert data["grafana-dashboards"]["primer.json"] == DASHBOARD.read_text()  # the file in git, unchanged
    dep = find(objects, "Deployment", "grafana")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]]["configMap"]["name"] for m in c["volumeMounts"]
              if "configMap" in volumes[m["name"]]}
    assert mounts["/etc/grafana/provisioning/datasources"].startswith("grafana-datasources-")
    assert mounts["/etc/grafana/provisioning/dashboards"].startswith("grafana-dashboard-providers-")
    assert mounts[provider["options"]["path"]].startswith("grafana-dashboards-")
    env = {e["name"]: e for e in c["env"]}
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]["value"] == f"{provider['options']['path']}/primer.json"


def test_grafana_admin_password_comes_from_the_bootstrap_and_viewers_need_none(apps) -> None:
    (c,) = find(apps["apps/monitoring"], "Deployment", "grafana")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    for key, secret_key in (("GF_SECURITY_ADMIN_USER", "username"), ("GF_SECURITY_ADMIN_PASSWORD", "password")):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "grafana-admin", "key": secret_key}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"]["value"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"]["value"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"]["value"] == "false"
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"]["value"] == "true"  # no downloads at start
    # No password anywhere in git's monitoring files.
    for path in (REPO / "apps" / "monitoring").rglob("*"):
        if path.is_file():
            assert not re.search(r"(?i)password\s*[:=]\s*\S", path.read_text()), path


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _series(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers not followed by '(' and not keywords or labels)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    tokens = {m.group(0) for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges)
              if not without_ranges[m.end():].lstrip().startswith("(")}  # a function call
    return tokens - PROMQL_WORDS


def test_the_dashboard_queries_only_series_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == names.GRAFANA_DASHBOARD_UID
    exported = SERVICE_SERIES | set(live_report.live_metric_names()) | {live_report.METRIC_SERVED_VERSION}
    used = set().union(*map(_series, _exprs()))
    assert used, "no series found: did the dashboard's format change?"
    unknown = used - exported
    assert not unknown, f"the dashboard queries {sorted(unknown)}, which the service does not export"
    # The panels the lab promises: requests and latency, the served version, live log loss
    # against climatology, drift.
    for required in ("primer_predictions_total", "primer_prediction_duration_seconds_bucket",
                     live_report.METRIC_SERVED_VERSION, live_report.score_metric_name("log_loss"),
                     live_report.METRIC_DRIFT_PSI, live_report.METRIC_DRIFT_ALERT, live_report.METRIC_DRIFT_UP_RATE):
        assert required in used, required
    # Label values the contract defines.
    for expr in _exprs():
        for label, value in re.findall(r'(scorer|window|check)=~?"([^"]+)"', expr):
            allowed = {"scorer": live_report.SCORERS, "window": live_report.WINDOWS,
                       "check": live_report.DRIFT_CHECKS}[label]
            assert set(value.split("|")) <= set(allowed), expr
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}


def test_the_series_parser_finds_names_and_skips_functions() -> None:
    assert _series('histogram_quantile(0.9, sum by (le) (rate(a_bucket{route="x"}[5m])))') == {"a_bucket"}
    assert _series("time() - max(b_seconds)") == {"b_seconds"}


# --- exposure -----------------------------------------------------------------------------------

def test_grafana_and_prometheus_node_ports_agree_everywhere(apps, lab) -> None:
    assert int(lab["GRAFANA_NODE_PORT"]) == names.GRAFANA_NODE_PORT
    assert int(lab["PROMETHEUS_NODE_PORT"]) == names.PROMETHEUS_NODE_PORT
    for service, port in (("grafana", names.GRAFANA_NODE_PORT), ("prometheus", names.PROMETHEUS_NODE_PORT)):
        svc = find(apps["apps/monitoring"], "Service", service)
        assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["nodePort"] == port
        dep = find(apps["apps/monitoring"], "Deployment", service)
        ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert ports[svc["spec"]["ports"][0]["targetPort"]] == svc["spec"]["ports"][0]["port"]
        assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    access = (REPO / "cluster-bootstrap" / "access.sh").read_text()
    assert 'grafana="http://$WORKER_IP:$GRAFANA_NODE_PORT/d/primer"' in access
    assert "http://$WORKER_IP:$PROMETHEUS_NODE_PORT/targets" in access
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert f"http://{names.WORKER_IP}:{names.GRAFANA_NODE_PORT}/d/{names.GRAFANA_DASHBOARD_UID}" in docs
    assert f"http://{names.WORKER_IP}:{names.PROMETHEUS_NODE_PORT}" in docs
    verify = (REPO / "cluster-bootstrap" / "verify.sh").read_text()
    assert re.search(r"apps_wanted=\([^)]*\bmonitoring\b", verify)


def test_monitoring_images_are_pinned_in_versions_env(apps, lab) -> None:
    images = {c.spec["name"]: c.spec["image"] for c in containers({"apps/monitoring": apps["apps/monitoring"]})}
    assert images == {"prometheus": lab["PROMETHEUS_IMAGE"], "grafana": lab["GRAFANA_IMAGE"]}
    job = find(apps["apps/mlflow"], "Job", "prediction-log-db")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == lab["POSTGRES_IMAGE"]


def test_serving_replays_the_history_file_as_the_trainer_does(apps) -> None:
    # Not Yahoo at every clock step: a file downloaded once, by the same init container.
    def pod(app: str, kind: str, name: str) -> dict[str, Any]:
        obj = find(apps[app], kind, name)
        return (obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"])["template"]["spec"]

    serving, training = pod("apps/serving", "Deployment", "primer-serving"), pod("apps/training", "CronJob",
                                                                                  "primer-train")
    s_fetch, t_fetch = serving["initContainers"][0], training["initContainers"][0]
    assert s_fetch["name"] == t_fetch["name"] == "fetch-history"
    assert s_fetch["command"] == t_fetch["command"] and s_fetch["env"] == t_fetch["env"]
    source = _env(apps, "apps/serving", serving["containers"][0])["PRIMER_DATA_SOURCE"]
    assert source == _env(apps, "apps/training", training["containers"][0])["PRIMER_DATA_SOURCE"]
    assert source == f"csv:{s_fetch['command'][-1]}"
    for spec in (serving, training):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims["history"] == "replay-history"
