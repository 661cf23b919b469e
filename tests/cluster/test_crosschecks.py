"""Cross-checks: the names, ports, IPs, paths, env vars, images and commands that
the Vagrantfile, versions.env, the manifests, the scripts, docs/cluster.md and the
Python code each spell out must agree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pytest
import yaml

from contract import names
from tests.cluster.support import (
    BOOTSTRAP,
    REPO,
    containers,
    find,
    parse_env_file,
    vagrant_machines,
)

# PRIMER_* variables the code reads that the cluster deliberately leaves unset
# (their defaults are right there). Keep in sync with docs/cluster.md ("Configuration not
# set in the cluster"; a test checks that it names each of them).
NOT_SET_IN_CLUSTER = {
    "PRIMER_SYNTHETIC_SEED": "only for PRIMER_DATA_SOURCE=synthetic; the lab uses yfinance",
    "PRIMER_REPO_DIR": "the trainer works in temporary clones of PRIMER_GIT_REMOTE; "
                       "the image's /app is the repository root for everything else",
    "PRIMER_TRAIN_YEARS": "the default training window (10 years) fits the lab",
    "PRIMER_EVAL_DAYS": "the gate's default, 1,000 walk-forward days (promotion/policy.yaml's rates assume it)",
    "PRIMER_CANDIDATES_FILE": "the packaged candidate grid (ml/candidates.yaml)",
    "PRIMER_SERVICE_URL": "`primer status` run from a workstation",
    "PRIMER_POLICY_FILE": "the gate policy promotion/policy.yaml ships in the image",
    "PRIMER_PIN_POLL_SECONDS": "unused in the cluster: PRIMER_PIN_WATCH is false (a new pin rolls the Deployment)",
    "PRIMER_FEATURE_TTL_SECONDS": "serving default (3600 s)",
    "PRIMER_LIVE_REFRESH_SECONDS": "serving default (30 s): the live report changes once per training run (5 min)",
    "PRIMER_MONITORING_FILE": "the monitor's thresholds promotion/monitoring.yaml ship in the image, like the policy",
}

# Set by bootstrap-created objects (never in git), referenced from the manifests.
BOOTSTRAP_OBJECTS = {
    ("secret", "postgres-credentials"): ["POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"],
    ("secret", "primer-forge"): ["PRIMER_FORGE_TOKEN"],
    ("configmap", "replay-clock"): ["PRIMER_REPLAY_EPOCH"],
    ("secret", "prediction-log-db"): ["PREDICTION_LOG_USER", "PREDICTION_LOG_DB", "PREDICTION_LOG_PASSWORD"],
    ("secret", "prediction-log"): ["PRIMER_PREDICTION_LOG"],
    ("secret", "grafana-admin"): ["username", "password"],
}

PROJECT_IMAGE = re.compile(r"/mlops-primer:")


def _read(rel: str) -> str:
    return (REPO / rel).read_text()


# --- public contract: worker IP and serving NodePort --------------------------------------

def test_versions_env_agrees_with_promotion_names(lab) -> None:
    assert lab["WORKER_IP"] == names.WORKER_IP
    assert int(lab["SERVING_NODE_PORT"]) == names.SERVING_NODE_PORT


def test_vagrantfile_builds_the_lab_from_versions_env(lab) -> None:
    cfg = vagrant_machines(REPO)
    assert cfg["settings"]["box"] == lab["BOX"] == "bento/ubuntu-24.04"
    assert cfg["settings"]["box_version"] == lab["BOX_VERSION"] and re.fullmatch(r"\d+\.\d+\.\d+", lab["BOX_VERSION"])
    assert [".", "/vagrant"] in cfg["synced_folders"]
    machines = {m["name"]: m for m in cfg["machines"]}
    assert list(machines) == ["control-plane", "worker-1"]
    ips = {n: [net["ip"] for net in m["vm"]["networks"] if net["type"] == "private_network"]
           for n, m in machines.items()}
    assert ips == {"control-plane": [lab["CONTROL_PLANE_IP"]], "worker-1": [names.WORKER_IP]}
    assert lab["CONTROL_PLANE_IP"] == "192.168.56.10"
    memory = sum(m["vm"]["providers"]["virtualbox"]["memory"] for m in machines.values())
    assert memory <= int(lab["LAB_MEMORY_MB"]) <= 8192, "the whole lab must fit in 8 GiB of VM RAM"
    # kubeadm needs >= 1700 MB and 2 CPUs on the control plane.
    assert machines["control-plane"]["vm"]["providers"]["virtualbox"]["memory"] >= 1700
    assert machines["control-plane"]["vm"]["providers"]["virtualbox"]["cpus"] >= 2


def test_vagrantfile_scales_workers_from_one_setting(tmp_path, lab) -> None:
    # WORKER_COUNT is the one knob: 3 workers get .21/.22/.23 and share the RAM budget.
    (tmp_path / "cluster-bootstrap").mkdir()
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    env = re.sub(r"(?m)^WORKER_COUNT=\d+$", "WORKER_COUNT=3", _read("cluster-bootstrap/versions.env"))
    (tmp_path / "cluster-bootstrap" / "versions.env").write_text(env)
    cfg = vagrant_machines(tmp_path)
    workers = [m for m in cfg["machines"] if m["name"].startswith("worker-")]
    assert [w["vm"]["networks"][0]["ip"] for w in workers] == ["192.168.56.21", "192.168.56.22", "192.168.56.23"]
    assert sum(m["vm"]["providers"]["virtualbox"]["memory"] for m in cfg["machines"]) <= 8192
    # Only the last VM runs the platform bootstrap and prints the URLs.
    provisioners = [[p["name"] for p in w["vm"]["provisioners"]] for w in workers]
    assert provisioners[:2] == [["node", "join"], ["node", "join"]]
    assert provisioners[2] == ["node", "join", "platform", "access"]


def test_vagrant_provisioners_run_existing_scripts_in_order() -> None:
    cfg = vagrant_machines(REPO)
    seen = []
    for machine in cfg["machines"]:
        for prov in machine["vm"]["provisioners"]:
            assert prov["type"] == "shell"
            match = re.fullmatch(r"bash /vagrant/(cluster-bootstrap/[\w-]+\.sh)( \S+)?", prov["inline"])
            assert match, f"unexpected inline provisioner: {prov['inline']!r}"
            assert (REPO / match.group(1)).is_file(), match.group(1)
            seen.append(match.group(1).split("/")[-1])
    assert seen == ["node-common.sh", "control-plane.sh", "node-common.sh", "worker.sh", "platform.sh", "access.sh"]


def test_serving_service_is_the_public_contract(apps) -> None:
    svc = find(apps["apps/serving"], "Service", "primer-serving")
    (port,) = svc["spec"]["ports"]
    assert svc["spec"]["type"] == "NodePort"
    assert port["nodePort"] == names.SERVING_NODE_PORT
    assert port["port"] == names.SERVING_PORT
    dep = find(apps["apps/serving"], "Deployment", "primer-serving")
    container_ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]] == names.SERVING_PORT
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]


def test_cluster_docs_and_scripts_show_the_same_api_url(lab) -> None:
    url = f"http://{names.WORKER_IP}:{names.SERVING_NODE_PORT}/predictionForTomorrow"
    docs = _read("docs/cluster.md")
    intro = docs.split("\n## ", 1)[0]
    assert url in intro, "docs/cluster.md must show the API URL before its first section"
    for script in ("access.sh", "verify.sh"):
        text = _read(f"cluster-bootstrap/{script}")
        assert "http://$WORKER_IP:$SERVING_NODE_PORT/predictionForTomorrow" in text, script


def test_node_ports_are_distinct_and_match_versions_env(apps, bootstrap, lab) -> None:
    found = {}
    for docs in {**apps, **bootstrap}.values():
        for obj in docs:
            if obj["kind"] == "Service":
                for port in obj["spec"]["ports"]:
                    if "nodePort" in port:
                        meta = obj["metadata"]
                        found[f"{meta.get('namespace', '')}/{meta['name']}"] = port["nodePort"]
    assert found == {
        "serving/primer-serving": int(lab["SERVING_NODE_PORT"]),
        "mlflow/mlflow": int(lab["MLFLOW_NODE_PORT"]),
        "gitea/gitea-http": int(lab["GITEA_NODE_PORT"]),
        "argocd/argocd-server": int(lab["ARGOCD_NODE_PORT"]),
        "monitoring/grafana": int(lab["GRAFANA_NODE_PORT"]),
        "monitoring/prometheus": int(lab["PROMETHEUS_NODE_PORT"]),
    }
    assert len(set(found.values())) == len(found), found
    assert all(30000 <= p <= 32767 for p in found.values())


def test_mlflow_service_port_and_allowed_hosts(apps, lab) -> None:
    svc = find(apps["apps/mlflow"], "Service", "mlflow")
    assert svc["spec"]["ports"][0]["port"] == names.MLFLOW_PORT
    dep = find(apps["apps/mlflow"], "Deployment", "mlflow")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--port={names.MLFLOW_PORT}" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    uri = f"mlflow.mlflow.svc.cluster.local:{names.MLFLOW_PORT}"
    prefix = lab["NODE_CIDR"].rsplit(".", 1)[0]
    assert uri in hosts and f"{prefix}.*:{lab['MLFLOW_NODE_PORT']}" in hosts


def test_clients_use_the_mlflow_service(apps) -> None:
    expected = f"http://mlflow.mlflow.svc.cluster.local:{names.MLFLOW_PORT}"
    uris = set()
    for c in containers(apps):
        env = {e["name"]: e.get("value") for e in c.spec.get("env", [])}
        if "MLFLOW_TRACKING_URI" in env:
            uris.add(env["MLFLOW_TRACKING_URI"])
    uris.add(find(apps["apps/training"], "ConfigMap", "primer-training")["data"]["MLFLOW_TRACKING_URI"])
    assert uris == {expected}


def test_gitea_settings_agree(apps, bootstrap, lab) -> None:
    config = find(apps["apps/training"], "ConfigMap", "primer-training")["data"]
    assert config["PRIMER_GIT_REMOTE"] == lab["GITEA_REPO_URL"]
    assert config["PRIMER_FORGE_URL"] == lab["GITEA_URL"]
    assert config["PRIMER_FORGE_REPO"] == f"{lab['GITEA_OWNER']}/{lab['GITEA_REPO']}"
    assert config["PRIMER_FORGE"] == "gitea"
    svc = find(bootstrap["cluster-bootstrap/manifests/gitea.yaml"], "Service", "gitea-http")
    assert lab["GITEA_URL"] == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"


# --- the pin --------------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["serving", "training"])
def test_pin_configmap_is_generated_from_the_pin_the_code_writes(app, apps) -> None:
    # The app includes the pin Component, which lives beside the pin (promotion/).
    kust = yaml.safe_load(_read(f"apps/{app}/kustomization.yaml"))
    component = (REPO / names.PIN_PATH).parent
    assert component.resolve() in [(REPO / "apps" / app / c).resolve() for c in kust["components"]]
    comp = yaml.safe_load((component / "kustomization.yaml").read_text())
    assert comp["kind"] == "Component"
    (gen,) = [g for g in comp["configMapGenerator"] if g["name"] == "model-pin"]
    (entry,) = gen["files"]
    key, _, rel = entry.rpartition("=")
    key = key or Path(rel).name  # `files: [model-version.yaml]`: the key is the file name
    assert (component / rel).resolve() == (REPO / names.PIN_PATH).resolve()
    # PRIMER_PIN_FILE points at that key, where the ConfigMap is mounted.
    for c in containers({f"apps/{app}": apps[f"apps/{app}"]}):
        env = {e["name"]: e.get("value") for e in c.spec.get("env", [])}
        from_config = any(r.get("configMapRef", {}).get("name") == "primer-training" for r in c.spec.get("envFrom", []))
        if "PRIMER_PIN_FILE" not in env and not from_config:
            continue  # sees no pin setting (e.g. the history download): needs no pin
        pin_file = (env.get("PRIMER_PIN_FILE")
                    or find(apps["apps/training"], "ConfigMap", "primer-training")["data"]["PRIMER_PIN_FILE"])
        volumes = {v["name"]: v for v in c.pod_spec["volumes"]}
        mounts = [m for m in c.spec["volumeMounts"] if "configMap" in volumes[m["name"]]
                  and volumes[m["name"]]["configMap"]["name"].startswith("model-pin-")]
        assert [f"{m['mountPath']}/{key}" for m in mounts] == [pin_file], c.source


# --- env vars -----------------------------------------------------------------------------------

def _settings_env_vars() -> set[str]:
    """Variables of the typed settings classes (contract/settings.py, pydantic-settings): the
    field's validation alias(es), else the class's env_prefix + the field name in capitals."""
    if not (REPO / "contract" / "settings.py").is_file():
        return set()
    import importlib

    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    module = importlib.import_module("contract.settings")
    found = set()
    for cls in vars(module).values():
        if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, str):
                found.add(alias)
            elif isinstance(alias, AliasChoices):
                found |= {c for c in alias.choices if isinstance(c, str)}
            else:
                found.add(f"{prefix}{field_name}".upper())
    return {n for n in found if n.startswith("PRIMER_")}


def _code_env_vars() -> set[str]:
    """PRIMER_* the code reads: the settings classes' variables and any quoted literal."""
    found = _settings_env_vars()
    for package in ("contract", "ml", "promotion", "bentos", "primer"):
        for path in (REPO / package).rglob("*.py"):
            found |= set(re.findall(r"""["'](PRIMER_[A-Z0-9_]+)["']""", path.read_text()))
    return found


def _manifest_env_vars(apps) -> dict[str, set[str]]:
    """PRIMER_* names each container gets: env entries and keys of envFrom ConfigMaps in git."""
    configmaps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("data", {})
                  for docs in apps.values() for o in docs if o["kind"] == "ConfigMap"}
    out = {}
    for c in containers(apps):
        names_ = {e["name"] for e in c.spec.get("env", [])}
        for ref in c.spec.get("envFrom", []):
            if "configMapRef" in ref:
                names_ |= set(configmaps[(c.namespace, ref["configMapRef"]["name"])])
        out[c.source] = {n for n in names_ if n.startswith("PRIMER_")}
    return out


def test_env_vars_set_in_manifests_are_read_by_the_code(apps) -> None:
    code = _code_env_vars()
    assert len(code) >= 10, "the grep found too few PRIMER_* literals: did the code layout change?"
    for source, env in _manifest_env_vars(apps).items():
        unknown = env - code
        assert not unknown, \
            f"{source} sets {sorted(unknown)}, which no code reads (contract/settings.py or a PRIMER_ literal)"


def test_env_vars_the_code_reads_are_set_or_deliberately_left_out(apps) -> None:
    code = _code_env_vars()
    set_somewhere = set().union(*_manifest_env_vars(apps).values())
    missing = code - set_somewhere - set(NOT_SET_IN_CLUSTER)
    assert not missing, (f"the code reads {sorted(missing)} but no manifest sets it: set it in apps/ "
                         "or add it to NOT_SET_IN_CLUSTER with the reason")
    stale = set(NOT_SET_IN_CLUSTER) - code
    assert not stale, f"NOT_SET_IN_CLUSTER lists {sorted(stale)}, which the code no longer reads"
    both = set(NOT_SET_IN_CLUSTER) & set_somewhere
    assert not both, f"{sorted(both)} are set in manifests but listed as not set"
    docs = _read("docs/cluster.md")
    section = docs.split("\n## Configuration not set in the cluster\n", 1)[1].split("\n## ", 1)[0]
    undocumented = {n for n in NOT_SET_IN_CLUSTER if f"`{n}`" not in section}
    assert not undocumented, f"docs/cluster.md does not list {sorted(undocumented)} as not set in the cluster"


def test_bootstrap_creates_the_objects_the_manifests_reference(apps) -> None:
    script = _read("cluster-bootstrap/platform.sh")
    for (kind, name), keys in BOOTSTRAP_OBJECTS.items():
        assert re.search(rf"create {kind}( generic)? {name}\b", script), f"platform.sh does not create {kind} {name}"
        for key in keys:
            assert f"--from-literal={key}=" in script, f"platform.sh does not set {key} in {kind} {name}"
    # ...and the manifests use exactly those keys.
    referenced = set()
    for c in containers(apps):
        for e in c.spec.get("env", []):
            ref = e.get("valueFrom", {})
            for kind, field in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
                if field in ref:
                    referenced.add((kind, ref[field]["name"], ref[field]["key"]))
        for ref in c.spec.get("envFrom", []):
            if "secretRef" in ref:
                referenced |= {("secret", ref["secretRef"]["name"], k)
                               for k in BOOTSTRAP_OBJECTS[("secret", ref["secretRef"]["name"])]}
    for kind, name, key in referenced:
        assert key in BOOTSTRAP_OBJECTS[(kind, name)], f"manifests read {kind} {name} key {key}"


# --- images -------------------------------------------------------------------------------------

def _image_tag() -> str:
    component = yaml.safe_load(_read("apps/components/image/kustomization.yaml"))
    return component["images"][0]["newTag"]


def test_project_image_comes_from_one_place(apps, lab) -> None:
    tag = _image_tag()
    # A commit id (12 hex digits) once the lab's bootstrap or build-image.sh recorded one;
    # "unbuilt" in a checkout that no lab has built yet. Never a movable name like 0.1.0.
    assert tag == "unbuilt" or re.fullmatch(r"[0-9a-f]{12}", tag), tag
    images = {c.spec["image"] for c in containers(apps) if PROJECT_IMAGE.search(c.spec["image"])}
    assert images == {f"{lab['IMAGE_REPOSITORY']}:{tag}"}
    component = yaml.safe_load(_read("apps/components/image/kustomization.yaml"))
    assert component["images"] == [{"name": "mlops-primer", "newName": lab["IMAGE_REPOSITORY"], "newTag": tag}]
    # Every app that runs the project image uses the component, and nothing is left un-rewritten.
    for c in containers(apps):
        assert c.spec["image"] != "mlops-primer", f"{c.source}: image not rewritten by apps/components/image"
        # A tag is a commit, built once: no pull on every start (a restart never changes the code).
        assert c.spec.get("imagePullPolicy") != "Always", c.source
    build = _read("cluster-bootstrap/build-image.sh")
    assert 'image="$IMAGE_REPOSITORY:$tag"' in build and 'name=$image,push=true' in build
    assert 'git -C "$work/repo" archive "$tag"' in build  # the context is a commit, never a work tree
    assert "IMAGE_TAG" not in lab
    assert lab["IMAGE_REPOSITORY"].startswith(f"{lab['CONTROL_PLANE_IP']}:{lab['REGISTRY_PORT']}/")


def test_every_image_is_pinned_and_known(apps, bootstrap, lab) -> None:
    allowed = {f"{lab['IMAGE_REPOSITORY']}:{_image_tag()}", lab["POSTGRES_IMAGE"], lab["REGISTRY_IMAGE"],
               lab["GITEA_IMAGE"], lab["PROMETHEUS_IMAGE"], lab["GRAFANA_IMAGE"]}
    for c in containers({**apps, **bootstrap}):
        assert c.spec["image"] in allowed, f"{c.source}: {c.spec['image']} is not pinned in versions.env"
        assert not c.spec["image"].endswith((":latest", ":stable")), c.source


def test_registry_is_reachable_where_containerd_trusts_it(bootstrap, lab) -> None:
    dep = find(bootstrap["cluster-bootstrap/manifests/registry.yaml"], "Deployment", "registry")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REGISTRY_HTTP_ADDR"] == f"{lab['CONTROL_PLANE_IP']}:{lab['REGISTRY_PORT']}"
    assert dep["spec"]["template"]["spec"]["hostNetwork"] is True
    node = _read("cluster-bootstrap/node-common.sh")
    assert 'registry="$CONTROL_PLANE_IP:$REGISTRY_PORT"' in node
    assert '/etc/containerd/certs.d/$registry/hosts.toml' in node


# --- commands -----------------------------------------------------------------------------------

def _resolve(group: click.Command, argv: list[str], where: str) -> None:
    """Walk argv through a click command tree; fail naming the first unknown piece."""
    ctx = click.Context(group)
    cmd = group
    options: list[str] = []
    for token in argv:
        if token.startswith("-"):
            options.append(token.split("=", 1)[0])
        elif isinstance(cmd, click.Group) and not options:
            sub = cmd.get_command(ctx, token)
            assert sub is not None, \
                f"{where}: `{token}` is not a subcommand of `{cmd.name}` ({sorted(cmd.list_commands(ctx))})"
            cmd = sub
    assert not isinstance(cmd, click.Group), f"{where}: `{' '.join(argv)}` stops at a command group"
    known = {opt for p in cmd.params for opt in [*p.opts, *p.secondary_opts]}
    unknown = [o for o in options if o not in known]
    assert not unknown, f"{where}: {unknown} are not options of `{cmd.name}`"


def test_commands_in_manifests_exist_in_the_cli(apps) -> None:
    from mlflow.cli import cli as mlflow_cli

    from primer.cli import main as primer

    seen = set()
    for c in containers(apps):
        argv = c.argv
        if not PROJECT_IMAGE.search(c.spec["image"]):
            continue
        assert argv, f"{c.source}: the project image needs an explicit command"
        tool = {"primer": primer, "mlflow": mlflow_cli}.get(argv[0])
        assert tool is not None, f"{c.source}: runs {argv[0]!r}, expected primer or mlflow"
        _resolve(tool, argv[1:], c.source)
        seen.add(" ".join(a for a in argv[:3] if not a.startswith("-")))
    assert seen == {"primer train", "primer serve", "primer registry sync", "primer registry prune",
                    "primer data fetch", "primer monitor", "mlflow server"}


def test_mlflow_reads_the_backend_uri_from_the_env_var_the_manifest_sets(apps) -> None:
    from mlflow.cli import cli as mlflow_cli

    server = mlflow_cli.commands["server"]
    envvars = {p.name: p.envvar for p in server.params}
    assert envvars["backend_store_uri"] == "MLFLOW_BACKEND_STORE_URI"
    c = find(apps["apps/mlflow"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "MLFLOW_BACKEND_STORE_URI" in {e["name"] for e in c["env"]}


def test_primer_check_catches_a_wrong_command() -> None:
    # The resolver is strict: a typo'd subcommand or option fails.
    from primer.cli import main as primer

    with pytest.raises(AssertionError, match="not a subcommand"):
        _resolve(primer, ["registry", "synch"], "test")
    with pytest.raises(AssertionError, match="not options"):
        _resolve(primer, ["serve", "--hostname", "x"], "test")


# --- versions.env itself ----------------------------------------------------------------------

def test_versions_env_pins_every_download(lab) -> None:
    urls = {k: v for k, v in lab.items() if v.startswith("http")}
    for key, url in urls.items():
        if key in {"GITEA_URL", "GITEA_REPO_URL", "ARGOCD_WEBHOOK_URL"}:
            continue  # in-cluster service addresses, not downloads
        assert not re.search(r"/(latest|stable|master|main)/", url), f"{key} is not pinned: {url}"
        assert re.search(r"v?\d+\.\d+", url), f"{key} names no version: {url}"
    for key in ("REGISTRY_IMAGE", "GITEA_IMAGE", "POSTGRES_IMAGE", "PROMETHEUS_IMAGE", "GRAFANA_IMAGE"):
        assert re.search(r":v?\d+\.\d+(\.\d+)?", lab[key]), f"{key} is not pinned to a version: {lab[key]}"
    assert lab["K8S_VERSION"].startswith("1.35.") and lab["K8S_MINOR"] == "v1.35"
    assert lab["K8S_APT_URL"] == "https://pkgs.k8s.io/core:/stable:/v1.35/deb/"


def test_versions_env_parser_rejects_shell_tricks(tmp_path) -> None:
    bad = tmp_path / "versions.env"
    bad.write_text("A=1\nB=$(curl evil)\n")
    with pytest.raises(ValueError, match="only plain values"):
        parse_env_file(bad)
    bad.write_text("A=${NOPE}\n")
    with pytest.raises(ValueError, match="not defined above"):
        parse_env_file(bad)


def test_bootstrap_placeholders_all_exist(lab) -> None:
    for path in (BOOTSTRAP / "manifests").glob("*.yaml"):
        for key in re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", path.read_text()):
            assert key in lab, f"{path.name}: ${{{key}}} is not in versions.env"


def test_pod_cidr_does_not_overlap_the_node_network(lab) -> None:
    import ipaddress

    pods = ipaddress.ip_network(lab["POD_CIDR"])
    nodes = ipaddress.ip_network(lab["NODE_CIDR"])
    services = ipaddress.ip_network(lab["SERVICE_CIDR"])
    assert not pods.overlaps(nodes) and not pods.overlaps(services) and not nodes.overlaps(services)
    assert ipaddress.ip_address(lab["WORKER_IP"]) in nodes and ipaddress.ip_address(lab["CONTROL_PLANE_IP"]) in nodes
