"""Every kustomization renders with Argo CD's options, and every object is valid
Kubernetes 1.35 (kubernetes-validate, strict) and follows the lab's rules:
non-root, resources, read-only root filesystems, the probes and rollout
settings the design depends on."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.cluster.support import (
    APPS,
    K8S_SCHEMA_VERSION,
    REPO,
    containers,
    find,
    kustomization_dirs,
    kustomize_build_options,
    pod_spec,
)

# Kinds validated by tests/cluster/test_argocd.py instead (CRDs: no upstream schema).
CUSTOM_GROUPS = ("argoproj.io/",)


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)


def test_schema_version_is_available() -> None:
    # validate() answers with the schema version it used: 1.35 exactly, not a fallback.
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    assert kubernetes_validate.validate(cm, K8S_SCHEMA_VERSION, strict=True) == "1.35"


def test_validation_rejects_broken_objects() -> None:
    # Guard against a validator that accepts anything (strict: unknown fields fail too).
    bad_type = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                "spec": {"replicas": "one", "selector": {}, "template": {}}}
    unknown_field = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                     "spec": {"ports": [{"port": 80}], "nodeport": 30951}}
    for obj in (bad_type, unknown_field):
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(obj)


def test_argocd_build_options_restrict_nothing_more_than_needed() -> None:
    # The pin reaches the apps as a Component beside it (promotion/), so no app needs
    # --load-restrictor LoadRestrictionsNone: Argo CD builds with kustomize's defaults,
    # exactly as the renders below do.
    assert kustomize_build_options() == []


def test_every_app_folder_is_a_kustomization() -> None:
    built = {d.relative_to(APPS).as_posix() for d in kustomization_dirs()}
    assert built == {"root", "platform", "mlflow", "training", "serving", "monitoring"}
    for component in ("image", "replay"):
        assert (APPS / "components" / component / "kustomization.yaml").is_file()


def test_every_rendered_object_is_valid_kubernetes_1_35(apps, bootstrap) -> None:
    failures = []
    checked = 0
    for source, docs in {**apps, **bootstrap}.items():
        assert docs, f"{source} rendered nothing"
        for obj in docs:
            if obj.get("apiVersion", "").startswith(CUSTOM_GROUPS):
                continue
            try:
                _validate(obj)
                checked += 1
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                failures.append(f"{source} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert checked >= 25  # all apps and bootstrap objects, not an empty loop


def test_every_container_is_non_root_limited_and_read_only(apps, bootstrap) -> None:
    problems = []
    for c in containers({**apps, **bootstrap}):
        where = f"{c.source} container {c.spec['name']}"
        pod_sc, sc = c.pod_spec.get("securityContext", {}), c.spec.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot not set")
        if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) == 0:
            problems.append(f"{where}: no non-zero runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities not dropped")
        res = c.spec.get("resources", {})
        for kind in ("requests", "limits"):
            for key in ("cpu", "memory"):
                if key not in res.get(kind, {}):
                    problems.append(f"{where}: no {kind}.{key}")
    assert not problems, "\n".join(problems)


def test_writable_paths_are_volumes_when_root_is_read_only(apps) -> None:
    # BentoML, MLflow and git write under HOME and /tmp: those must be volumes.
    for c in containers(apps):
        mounts = {m["mountPath"] for m in c.spec.get("volumeMounts", [])}
        env = {e["name"]: e.get("value") for e in c.spec.get("env", [])}
        if "/mlops-primer:" in c.spec["image"]:
            assert "/tmp" in mounts, f"{c.source}: /tmp is not a volume"
            assert env.get("HOME", "").startswith("/tmp/"), f"{c.source}: HOME must point into the /tmp volume"
        if "BENTOML_HOME" in env:
            assert env["BENTOML_HOME"].startswith("/tmp/"), c.source


def test_app_pods_do_not_mount_service_account_tokens(apps) -> None:
    for source, docs in apps.items():
        for obj in docs:
            spec = pod_spec(obj)
            if spec is not None:
                assert spec.get("automountServiceAccountToken") is False, \
                    f"{source} {obj['kind']}/{obj['metadata']['name']}"


def test_serving_rolls_without_losing_the_old_pods(apps) -> None:
    dep = find(apps["apps/serving"], "Deployment", "primer-serving")
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A pod that is alive but not ready (MLflow down, bad pin) must never be restarted:
    # the probes that kill (liveness, startup) ask /livez only.
    for probe in ("livenessProbe", "startupProbe"):
        if probe in c:
            assert c[probe]["httpGet"]["path"] == "/livez", probe
    assert "livenessProbe" in c


def test_generated_pin_configmaps_survive_rollouts(apps) -> None:
    for app in ("apps/serving", "apps/training"):
        pins = [o for o in apps[app] if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("model-pin-")]
        assert len(pins) == 1, f"{app}: expected one generated, hash-suffixed model-pin ConfigMap"
        ann = pins[0]["metadata"]["annotations"]
        assert ann["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
        assert "Prune=false" in ann["argocd.argoproj.io/sync-options"]
        # The pods mount the generated (hashed) name: a new pin rolls them.
        names = {v["configMap"]["name"] for o in apps[app] if pod_spec(o)
                 for v in pod_spec(o).get("volumes", []) if "configMap" in v}
        assert pins[0]["metadata"]["name"] in names


def test_registry_sync_runs_after_each_sync(apps) -> None:
    job = find(apps["apps/serving"], "Job", "primer-registry-sync")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    assert "ttlSecondsAfterFinished" not in job["spec"]  # Argo CD's hook policy deletes it


def test_training_cronjob_never_overlaps_and_keeps_history(apps) -> None:
    cron = find(apps["apps/training"], "CronJob", "primer-train")
    spec = cron["spec"]
    assert spec["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert 0 <= spec["jobTemplate"]["spec"]["backoffLimit"] <= 3
    # One simulated day per CronJob period (the clock's settings: apps/components/replay).
    (clock,) = [o for o in apps["apps/training"] if o["kind"] == "ConfigMap"
                and o["metadata"]["name"].startswith("primer-replay-")]
    assert clock["data"]["PRIMER_REPLAY_INTERVAL_SECONDS"] == "300" and clock["data"]["PRIMER_MODE"] == "replay"


def test_mlflow_server_probes_and_storage(apps) -> None:
    dep = find(apps["apps/mlflow"], "Deployment", "mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert "--artifacts-destination=/mlartifacts" in c["args"]
    assert {"mountPath": "/mlartifacts", "name": "artifacts"} in c["volumeMounts"]
    uri = {e["name"]: e for e in c["env"]}["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/")
    sts = find(apps["apps/mlflow"], "StatefulSet", "postgres")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    # PostgreSQL syncs (and must be healthy) before the server that migrates its schema.
    wave = "argocd.argoproj.io/sync-wave"
    assert int(sts["metadata"]["annotations"][wave]) < int(dep["metadata"].get("annotations", {}).get(wave, "0"))


def test_network_policies_only_let_mlflow_reach_postgres_and_clients_reach_mlflow(apps, lab) -> None:
    docs = apps["apps/mlflow"]
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    pg = find(docs, "NetworkPolicy", "postgres-from-mlflow")["spec"]
    assert pg["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgres"}
    assert pg["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
                              "ports": [{"protocol": "TCP", "port": 5432}]}]
    ml = find(docs, "NetworkPolicy", "mlflow-from-clients")["spec"]
    namespaces = ml["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert sorted(namespaces) == ["serving", "training"]
    # The UI rule admits everything but the pod network (see the file's trade-off note).
    assert ml["ingress"][1]["from"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [lab["POD_CIDR"]]}}]
    # The namespaces the selector names are the ones the platform app creates.
    created = {o["metadata"]["name"] for o in apps["apps/platform"] if o["kind"] == "Namespace"}
    assert set(namespaces) <= created


def test_manifest_files_are_all_referenced() -> None:
    # A YAML file in an app folder that no kustomization lists would silently not deploy.
    import yaml

    for directory in [*APPS.iterdir()]:
        if not directory.is_dir():
            continue
        kust_file = directory / "kustomization.yaml"
        kust = yaml.safe_load(kust_file.read_text()) if kust_file.exists() else None
        if kust is None:
            continue
        listed = set(kust.get("resources", []))
        for path in directory.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.name in listed, f"{path.relative_to(REPO)} is not listed in its kustomization"
