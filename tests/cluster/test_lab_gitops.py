"""Code in git with the model, least privilege, deletion guards.

lib.sh's seed/tag functions run for real on real git repositories (a full clone, a
shallow clone, a folder without git); the Argo CD projects and Applications are
validated against the Argo CD v3.5 CRD schemas (tests/cluster/argocd/, copied from
argoproj/argo-cd v3.5.1 manifests/crds) and checked against what the apps render.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.cluster.support import BOOTSTRAP, REPO, render_placeholders

CRDS = Path(__file__).with_name("argocd")
IMAGE_COMPONENT = "apps/components/image/kustomization.yaml"


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _lib(checkout: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the checkout's lib.sh sourced (REPO_DIR = the checkout)."""
    return subprocess.run(["bash", "-c", f'set -euo pipefail; . "{checkout}/cluster-bootstrap/lib.sh"; {script}'],
                          capture_output=True, text=True, timeout=120)


def _checkout(tmp_path: Path, kind: str) -> Path:
    """A small checkout holding the bootstrap scripts, the image Component and a code file."""
    origin = tmp_path / "origin"
    (origin / "cluster-bootstrap").mkdir(parents=True)
    for name in ("lib.sh", "versions.env"):
        shutil.copy(BOOTSTRAP / name, origin / "cluster-bootstrap" / name)
    (origin / IMAGE_COMPONENT).parent.mkdir(parents=True)
    shutil.copy(REPO / IMAGE_COMPONENT, origin / IMAGE_COMPONENT)
    (origin / "code.py").write_text("ANSWER = 1\n")
    if kind == "no-git":
        return origin
    _git(origin, "init", "-q", "-b", "main")
    for n in (1, 2):
        (origin / "code.py").write_text(f"ANSWER = {n}\n")
        _git(origin, "add", "-A")
        _git(origin, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"commit {n}")
    if kind == "full":
        return origin
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", str(shallow)], check=True, timeout=60)
    assert _git(shallow, "rev-parse", "--is-shallow-repository") == "true"
    return shallow


@pytest.mark.parametrize("kind", ["full", "shallow", "no-git"])
def test_the_lab_runs_a_pushable_commit_of_the_checkout_tagged_by_its_id(tmp_path, kind: str) -> None:
    checkout = _checkout(tmp_path, kind)
    if kind != "no-git":
        (checkout / "code.py").write_text("ANSWER = 'uncommitted'\n")
    # Twice, like build-image.sh on the control plane and platform.sh on the worker: same tag.
    tags = []
    for n in (1, 2):
        proc = _lib(checkout, f'seed_repo "{tmp_path}/seed{n}" && image_tag_of "{tmp_path}/seed{n}"')
        assert proc.returncode == 0, proc.stderr
        tags.append(proc.stdout.strip())
    assert tags[0] == tags[1] and len(tags[0]) == 12
    seed = tmp_path / "seed1"
    if kind == "full":
        assert tags[0] == _git(checkout, "rev-parse", "HEAD")[:12]  # the checkout's own commit id
    if kind != "no-git":  # only what was committed reaches the lab
        assert (seed / "code.py").read_text() == "ANSWER = 2\n"
        assert "uncommitted changes" in proc.stderr
    # Gitea refuses shallow pushes, as does a plain bare repository (receive.shallowUpdate off).
    bare = tmp_path / "gitea.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    push = f'git -C "{seed}" push -q "{bare}" HEAD:refs/heads/main'
    proc = _lib(checkout, f'set_image_tag "{seed}" "{tags[0]}" && {push}')
    assert proc.returncode == 0, proc.stderr
    component = yaml.safe_load(_git(bare, "show", f"main:{IMAGE_COMPONENT}"))
    assert component["images"][0]["newTag"] == tags[0]
    # The tag is its own commit on top of the code's commit: a revert of it restores the old tag.
    assert _git(bare, "log", "-1", "--format=%s", "main") == f"Run image {tags[0]} (the code of commit {tags[0]})"
    assert _git(bare, "rev-parse", "main~1")[:12] == tags[0]


def test_a_shallow_clone_as_it_was_seeded_before_is_refused(tmp_path) -> None:
    # What the old seed did (git clone of the shallow checkout, then push): the push fails,
    # which stopped `vagrant up`. The test above pushes the same checkout through seed_repo.
    checkout = _checkout(tmp_path, "shallow")
    bare = tmp_path / "gitea.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(checkout), str(clone)], check=True, timeout=60)
    proc = subprocess.run(["git", "-C", str(clone), "push", "-q", str(bare), "HEAD:refs/heads/main"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "shallow" in proc.stderr


def test_bootstrap_seeds_and_builds_the_same_commit() -> None:
    platform = (BOOTSTRAP / "platform.sh").read_text()
    build = (BOOTSTRAP / "build-image.sh").read_text()
    assert 'seed_repo "$seed/repo"' in platform and 'image_tag=$(image_tag_of "$seed/repo")' in platform
    assert 'set_image_tag "$seed/repo" "$image_tag"' in platform
    assert 'seed_repo "$work/repo"' in build and 'tag=$(image_tag_of "$work/repo")' in build
    # Argo CD gets the apps only once their image exists.
    assert platform.index('retry 240 10 image_in_registry "$image_tag"') < platform.index("root-application.yaml")
    # The build starts on the control plane in the background, before the worker is even booted.
    control = (BOOTSTRAP / "control-plane.sh").read_text()
    assert 'systemd-run --quiet --unit=primer-image-build' in control and 'build-image.sh"' in control


# --- Argo CD projects ---------------------------------------------------------------------------

def _crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{name}-crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema with unknown fields refused (the API server prunes them silently)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        open_ended = "x-kubernetes-preserve-unknown-fields" in schema
        if schema.get("type") == "object" and "properties" in schema and not open_ended:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _projects(lab) -> dict[str, dict[str, Any]]:
    text = render_placeholders((BOOTSTRAP / "manifests" / "appprojects.yaml").read_text(), lab, "appprojects.yaml")
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d}


def _validate(obj: dict[str, Any], crd: str) -> None:
    schema = _strict(_crd_schema(crd))
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.validate(obj, schema)


def test_applications_and_projects_validate_against_the_argocd_crds(apps, bootstrap, lab) -> None:
    for project in _projects(lab).values():
        _validate(project, "appproject")
    applications = [*apps["apps/root"], *bootstrap["cluster-bootstrap/manifests/root-application.yaml"]]
    for app in applications:
        _validate(app, "application")
    # The validation can fail: a misspelt field is refused.
    bad = {**applications[0], "spec": {**applications[0]["spec"], "projet": "primer"}}
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad, "application")


def _allowed(rules: list[dict[str, str]] | None, group: str, kind: str, name: str | None = None) -> bool:
    return any(r["group"] in {group, "*"} and r["kind"] in {kind, "*"} and r.get("name") in {None, name}
               for r in rules or [])


def test_each_project_allows_exactly_this_repository_its_namespaces_and_the_kinds_used(apps, bootstrap, lab) -> None:
    projects = _projects(lab)
    # The default project allows nothing: no source, no destination, no kind.
    default = projects["default"]["spec"]
    assert default["sourceRepos"] == [] and default["destinations"] == [] and default["clusterResourceWhitelist"] == []
    assert default["namespaceResourceBlacklist"] == [{"group": "*", "kind": "*"}]
    for name in ("primer", "primer-root"):
        spec = projects[name]["spec"]
        assert spec["sourceRepos"] == [lab["GITEA_REPO_URL"]], name
        assert {d["server"] for d in spec["destinations"]} == {"https://kubernetes.default.svc"}, name
    root = projects["primer-root"]["spec"]
    assert root["namespaceResourceWhitelist"] == [{"group": "argoproj.io", "kind": "Application"}]
    assert [d["namespace"] for d in root["destinations"]] == ["argocd"] and root["clusterResourceWhitelist"] == []

    spec = projects["primer"]["spec"]
    namespaces = {d["namespace"] for d in spec["destinations"]}
    used_kinds = set()
    for app in apps["apps/root"]:
        assert app["spec"]["project"] == "primer"
        assert app["spec"]["destination"]["namespace"] in namespaces
        for obj in apps[app["spec"]["source"]["path"]]:
            group = obj["apiVersion"].rpartition("/")[0]
            used_kinds.add((group, obj["kind"]))
            if obj["kind"] == "Namespace":  # cluster-scoped: allowed by name
                assert _allowed(spec["clusterResourceWhitelist"], group, "Namespace", obj["metadata"]["name"])
                assert obj["metadata"]["name"] in namespaces
            else:
                assert _allowed(spec["namespaceResourceWhitelist"], group, obj["kind"]), obj["kind"]
                assert obj["metadata"]["namespace"] in namespaces
    # Exactly the kinds used: nothing whitelisted that no app deploys.
    listed = {(r["group"], r["kind"]) for r in spec["namespaceResourceWhitelist"] + spec["clusterResourceWhitelist"]}
    assert listed == used_kinds
    (root_app,) = bootstrap["cluster-bootstrap/manifests/root-application.yaml"]
    assert root_app["spec"]["project"] == "primer-root"


# --- Least privilege in Gitea -------------------------------------------------------------------

def test_the_trainer_pushes_as_a_non_admin_bot_through_pull_requests(lab) -> None:
    platform = (BOOTSTRAP / "platform.sh").read_text()
    # The bot is created without --admin, gets write access to this repository only, and
    # every token the apps hold is the bot's, with the scopes versions.env names.
    create = next(line for line in platform.splitlines() if 'admin user create --username "$GITEA_BOT_USER"' in line)
    assert "--admin" not in create
    assert '"permission":"write"' in platform and '$repo_api/collaborators/$GITEA_BOT_USER' in platform
    assert 'generate-access-token --username "$GITEA_BOT_USER"' in platform
    assert '--username "$gitea_user" \\\n    --token-name' not in platform
    assert lab["GITEA_BOT_TOKEN_SCOPES"].split(",") == ["write:repository", "write:issue"]
    assert lab["GITEA_ARGOCD_TOKEN_SCOPES"] == "read:repository"
    # main: only the admin pushes and merges; the bot may push the pin file alone (bootstrap).
    for field in ('"enable_push_whitelist":true', '"push_whitelist_usernames":["$gitea_user"]',
                  '"enable_merge_whitelist":true', '"merge_whitelist_usernames":["$gitea_user"]',
                  '"unprotected_file_patterns":"$GITEA_BOT_DIRECT_PATHS"'):
        assert field in platform, field
    from contract.names import PIN_PATH
    assert lab["GITEA_BOT_DIRECT_PATHS"] == PIN_PATH


def test_gitea_notifies_argocd_of_every_push(bootstrap, lab) -> None:
    platform = (BOOTSTRAP / "platform.sh").read_text()
    assert "webhook.gogs.secret" in platform and '"$repo_api/hooks"' in platform
    assert lab["ARGOCD_WEBHOOK_URL"] == "http://argocd-server.argocd.svc.cluster.local/api/webhook"
    # Gitea may call a cluster-internal address; Argo CD's server answers plain HTTP on port 80.
    gitea = next(o for o in bootstrap["cluster-bootstrap/manifests/gitea.yaml"] if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in gitea["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GITEA__webhook__ALLOWED_HOST_LIST"] == "private"
    svc = next(o for o in bootstrap["cluster-bootstrap/manifests/argocd-server-service.yaml"] if o["kind"] == "Service")
    assert 80 in {p["port"] for p in svc["spec"]["ports"]}


# --- Deleting things keeps the data -------------------------------------------------------------

def test_namespaces_and_volumes_survive_a_deleted_application(apps, bootstrap) -> None:
    # Prune=false does not stop cascade deletion (deleting `root` deletes every app's
    # resources); Delete=false does. Volumes are Retain: a claim deleted by hand keeps its data.
    guarded = []
    for app, objects in apps.items():
        for obj in objects:
            if obj["kind"] in {"Namespace", "PersistentVolumeClaim"}:
                options = obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-options", "")
                assert {"Prune=false", "Delete=false"} <= {o.strip() for o in options.split(",")}, \
                    f"{app} {obj['kind']}/{obj['metadata']['name']}"
                guarded.append(obj["metadata"]["name"])
            claims = [obj["spec"]] if obj["kind"] == "PersistentVolumeClaim" else [
                t["spec"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])]
            for claim in claims:
                assert claim.get("storageClassName") == "primer-retain", f"{app} {obj['metadata']['name']}"
            if obj["kind"] == "StatefulSet":
                assert obj["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                              "whenScaled": "Retain"}
    assert sorted(guarded) == ["mlflow", "mlflow-artifacts", "monitoring", "prometheus-data", "replay-history",
                              "replay-history", "serving", "trainer-state", "training"]
    (storage_class,) = bootstrap["cluster-bootstrap/manifests/storage.yaml"]
    assert storage_class["metadata"]["name"] == "primer-retain" and storage_class["reclaimPolicy"] == "Retain"
    assert storage_class["provisioner"] == "rancher.io/local-path"
    assert "manifests/storage.yaml" in (BOOTSTRAP / "control-plane.sh").read_text()
    gitea = bootstrap["cluster-bootstrap/manifests/gitea.yaml"]
    gitea_claim = next(o for o in gitea if o["kind"] == "PersistentVolumeClaim")
    assert gitea_claim["spec"]["storageClassName"] == "primer-retain"  # the lab's git history


def test_the_postgres_statefulset_is_governed_by_a_headless_service(apps) -> None:
    objects = apps["apps/mlflow"]
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    governing = services[sts["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]


# --- Time to a first answer ---------------------------------------------------------------------

def test_one_time_estimate_everywhere_and_it_is_the_budget_total() -> None:
    doc = (REPO / "docs" / "cluster.md").read_text()
    table = doc.split("<!-- time-budget:start", 1)[1].split("<!-- time-budget:end -->", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    steps = {cells[0].strip(): cells[1].strip() for cells in rows[1:]}
    total = int(steps.pop("**total**").strip("*"))
    assert sum(int(m) for m in steps.values()) == total
    places = {"Vagrantfile": (REPO / "Vagrantfile").read_text(), "README.md": (REPO / "README.md").read_text(),
              "docs/cluster.md": doc}
    for name, text in places.items():
        estimates = set(re.findall(r"~(\d+)(?:[-–]\d+)? min", text))
        assert estimates == {str(total)}, f"{name} gives {sorted(estimates)} minutes, the budget says {total}"


def test_verify_reports_the_pin_serving_mounts_not_the_newest_configmap(tmp_path) -> None:
    # After a revert the pin's hashed ConfigMap is an older one again; the newest ConfigMap
    # (what verify.sh used to read) names the reverted version.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text("""#!/usr/bin/env bash
case "$*" in
  *"get deployment primer-serving"*) printf model-pin-reverted ;;
  *"get configmap model-pin-reverted"*) printf 'version: 3\\n' ;;
  *"get configmap model-pin-newest"*|*"-l app.kubernetes.io/name=model-pin"*) printf 'version: 5\\n' ;;
  *) exit 1 ;;
esac
""")
    (bin_dir / "kubectl").chmod(0o755)
    verify = (BOOTSTRAP / "verify.sh").read_text()
    functions = re.search(r"^kubectl\(\) \{.*?\n", verify, re.M).group(0) + re.search(
        r"^pinned_version\(\) \{.*?\n\}\n", verify, re.M | re.S).group(0)
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail\n{functions}\npinned_version"], capture_output=True,
                          text=True, timeout=30, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
