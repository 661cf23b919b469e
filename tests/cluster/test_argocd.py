"""Argo CD: the Applications (app of apps) are complete, ordered by integer sync
waves, point at folders that exist in this repository, and argocd-cm carries the
settings the design needs (Application health for waves, kustomize options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.cluster.support import ARGOCD_CM, REPO

WAVE = "argocd.argoproj.io/sync-wave"
ORDER = ["platform", "mlflow", "training", "serving", "monitoring"]  # the sync order the design asks for


def _applications(apps, bootstrap) -> dict[str, dict[str, Any]]:
    found = [o for o in apps["apps/root"] if o["kind"] == "Application"]
    found += [o for o in bootstrap["cluster-bootstrap/manifests/root-application.yaml"] if o["kind"] == "Application"]
    by_name = {o["metadata"]["name"]: o for o in found}
    assert len(by_name) == len(found), "duplicate Application names"
    return by_name


def test_root_holds_one_application_per_app(apps) -> None:
    kinds = {o["kind"] for o in apps["apps/root"]}
    assert kinds == {"Application"}
    names = sorted(o["metadata"]["name"] for o in apps["apps/root"])
    assert names == sorted(ORDER)
    # Every app folder (but root and shared components) has its Application.
    folders = sorted(p.name for p in (REPO / "apps").iterdir() if p.is_dir() and p.name not in {"root", "components"})
    assert folders == sorted(ORDER)


def test_every_application_is_complete(apps, bootstrap, lab) -> None:
    for name, app in _applications(apps, bootstrap).items():
        assert app["apiVersion"] == "argoproj.io/v1alpha1", name
        assert app["metadata"]["namespace"] == "argocd", name
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"].get("finalizers", []), name
        spec = app["spec"]
        assert spec["project"] == ("primer-root" if name == "root" else "primer"), name
        src = spec["source"]
        assert src["repoURL"] == lab["GITEA_REPO_URL"], f"{name}: repoURL must be the in-cluster Gitea repo"
        assert src["targetRevision"] == "main", name
        path = REPO / src["path"]
        assert path.is_dir() and (path / "kustomization.yaml").is_file(), \
            f"{name}: {src['path']} is not a kustomization here"
        assert spec["destination"]["server"] == "https://kubernetes.default.svc", name
        assert spec["destination"]["namespace"], name
        auto = spec["syncPolicy"]["automated"]
        assert auto.get("prune") is True and auto.get("selfHeal") is True, f"{name}: automated prune + selfHeal"


def test_child_applications_deploy_their_own_folder_into_their_namespace(apps) -> None:
    for app in apps["apps/root"]:
        name = app["metadata"]["name"]
        assert app["spec"]["source"]["path"] == f"apps/{name}"
        rendered = apps[f"apps/{name}"]
        declared = yaml.safe_load((REPO / "apps" / name / "kustomization.yaml").read_text()).get("namespace")
        if declared:  # namespaced apps: the Application targets the namespace the kustomization sets
            assert app["spec"]["destination"]["namespace"] == declared, name
            assert all(o["metadata"].get("namespace") == declared for o in rendered if o["kind"] != "Namespace")


def test_sync_waves_are_integers_in_design_order(apps) -> None:
    waves = {}
    for app in apps["apps/root"]:
        raw = app["metadata"].get("annotations", {}).get(WAVE)
        assert isinstance(raw, str), f"{app['metadata']['name']}: {WAVE} must be a quoted string"
        waves[app["metadata"]["name"]] = int(raw)  # ValueError = not an integer
    assert [waves[n] for n in ORDER] == sorted(waves[n] for n in ORDER)
    assert len(set(waves.values())) == len(waves), "each app in its own wave"


def test_a_failed_sync_retries_with_the_newest_commit(apps, bootstrap, lab) -> None:
    """A revert pushed while a bad pin's sync is failing must not wait for the old sync's retries.
    `retry.refresh` exists since Argo CD 3.1 (argo-cd#23038)."""
    major, minor = (int(x) for x in lab["ARGOCD_VERSION"].split(".")[:2])
    assert (major, minor) >= (3, 1)
    for name, app in _applications(apps, bootstrap).items():
        retry = app["spec"]["syncPolicy"]["retry"]
        assert retry.get("refresh") is True, name
        assert retry["limit"] >= 3, name


def test_a_bad_pin_holds_the_serving_sync_for_minutes_not_a_quarter_hour(apps) -> None:
    # Argo CD waits for the Deployment's health before the PostSync hook; a rollout that
    # cannot become ready turns Degraded only at the progress deadline, which ends the wait.
    dep = next(o for o in apps["apps/serving"] if o["kind"] == "Deployment")
    assert dep["spec"]["progressDeadlineSeconds"] <= 180


def test_root_application_is_the_app_of_apps(bootstrap) -> None:
    (root,) = bootstrap["cluster-bootstrap/manifests/root-application.yaml"]
    assert root["metadata"]["name"] == "root"
    assert root["spec"]["source"]["path"] == "apps/root"


def test_repo_url_is_written_once_in_apps(lab) -> None:
    # Children get repoURL from apps/root/kustomization.yaml only.
    hits = [p for p in (REPO / "apps").rglob("*.yaml")
            if "repoURL:" in p.read_text() or "/spec/source/repoURL" in p.read_text()]
    assert hits == [REPO / "apps" / "root" / "kustomization.yaml"]
    assert lab["GITEA_REPO_URL"] in hits[0].read_text()


def test_argocd_cm_restores_application_health_for_waves() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["metadata"] == {"name": "argocd-cm", "namespace": "argocd",
                              "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}}
    lua = cm["data"]["resource.customizations.health.argoproj.io_Application"]
    # The documented snippet: report the child's own health, Progressing until it has one.
    for needle in ('hs.status = "Progressing"', "obj.status.health.status", "return hs"):
        assert needle in lua
    assert lua.count("if ") == lua.count("end"), "unbalanced Lua blocks"


def test_argocd_cm_sets_no_load_restrictor_and_no_generator_reads_outside_its_folder() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert "kustomize.buildOptions" not in cm["data"]
    assert not any("load-restrictor" in str(v).lower() or "loadrestrictions" in str(v).lower()
                   for v in cm["data"].values())
    # ...which is possible: every generator (apps/ and the pin Component in promotion/) reads
    # only files in its own folder, and both pin users include that Component.
    kustomizations = [*(REPO / "apps").rglob("kustomization.yaml"), REPO / "promotion" / "kustomization.yaml"]
    for path in kustomizations:
        kust = yaml.safe_load(path.read_text())
        for gen in [*kust.get("configMapGenerator", []), *kust.get("secretGenerator", [])]:
            for entry in [*gen.get("files", []), *gen.get("envs", [])]:
                rel = entry.split("=", 1)[-1]
                assert ".." not in Path(rel).parts and not Path(rel).is_absolute(), f"{path}: {entry}"
    for app in ("serving", "training"):
        kust = yaml.safe_load((REPO / "apps" / app / "kustomization.yaml").read_text())
        own = [g["name"] for g in kust.get("configMapGenerator", [])]
        assert "model-pin" not in own, f"apps/{app} generates the pin itself again"
        users = [(REPO / "apps" / app / c).resolve() for c in kust.get("components", [])]
        assert (REPO / "promotion").resolve() in users, f"apps/{app} does not include the pin Component"


def test_bootstrap_applies_argocd_pinned_and_server_side(lab) -> None:
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    # The pinned install.yaml, fetched through lib.sh's bounded download cache, applied server-side.
    assert 'download "$ARGOCD_INSTALL_URL" "$argocd_manifest"' in script
    assert 'argocd_manifest=$argocd_dir/install.yaml' in script
    # ...through a kustomization that adds our resource patches (tests/cluster/test_lab_budget.py).
    assert 'kubectl apply -n argocd --server-side --force-conflicts -k "$argocd_dir"' in script
    assert lab["ARGOCD_VERSION"].startswith("3.5.")
    assert lab["ARGOCD_INSTALL_URL"] == (
        f"https://raw.githubusercontent.com/argoproj/argo-cd/v{lab['ARGOCD_VERSION']}/manifests/install.yaml")
    for manifest in ("argocd-cm.yaml", "argocd-cmd-params-cm.yaml", "argocd-server-service.yaml",
                     "root-application.yaml", "appprojects.yaml", "patches/argocd-resources.yaml"):
        assert manifest in script, f"platform.sh does not apply {manifest}"


def test_bootstrap_restarts_what_reads_argocd_cm_at_start() -> None:
    # install.yaml feeds timeout.reconciliation to the controller and the repo server as an
    # env var (configMapKeyRef) and the server reads server.insecure at start: a pod started
    # before our argocd-cm keys landed keeps the defaults until it is restarted.
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    applied = script.index("manifests/argocd-cm.yaml")
    for workload in ("deployment/argocd-server", "deployment/argocd-repo-server",
                     "statefulset/argocd-application-controller"):
        restarts = [i for i in range(len(script)) if script.startswith(workload, i)
                    and "rollout restart" in script[script.rfind("\n", 0, i):i]]
        assert restarts and restarts[0] > applied, f"platform.sh must restart {workload} after applying argocd-cm"
