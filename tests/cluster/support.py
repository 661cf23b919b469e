"""Helpers for the cluster checks: the lab settings, rendered manifests, tools.

Nothing here can run Kubernetes; it reads the files the cluster is built from
(versions.env, the kustomizations, the bootstrap manifests, the Vagrantfile)
exactly as the bootstrap and Argo CD would, so the tests can cross-check them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "cluster-bootstrap"
APPS = REPO / "apps"
VERSIONS_ENV = BOOTSTRAP / "versions.env"
ARGOCD_CM = BOOTSTRAP / "manifests" / "argocd-cm.yaml"
K8S_SCHEMA_VERSION = "1.35.0"  # kubernetes-validate ships this exact version

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def parse_env_file(path: Path) -> dict[str, str]:
    """versions.env as the scripts see it: KEY=value, ``${KEY}`` of earlier keys expanded."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: not a KEY=value line: {raw!r}")
        key, value = match.groups()
        if re.search(r"\s|[\"'`]|\$\(|\$[A-Za-z_]", value):
            # The Vagrantfile and these tests read the file without a shell: keep it plain.
            raise ValueError(f"{path}:{number}: only plain values and ${{KEY}} references are allowed: {raw!r}")

        def expand(m: re.Match[str], _n: int = number) -> str:
            if m.group(1) not in values:
                raise ValueError(f"{path}:{_n}: ${{{m.group(1)}}} is not defined above")
            return values[m.group(1)]

        values[key] = _REF.sub(expand, value)
    return values


def versions() -> dict[str, str]:
    return parse_env_file(VERSIONS_ENV)


def render_placeholders(text: str, values: dict[str, str], source: str) -> str:
    """The Python twin of lib.sh's ``render``: ``${KEY}`` -> versions.env value."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"{source}: unknown placeholder ${{{m.group(1)}}} (not in versions.env)")
        return values[m.group(1)]

    return _REF.sub(sub, text)


def require_tool(name: str, hint: str) -> str:
    """Path of a required tool; fail (never skip) with how to get it."""
    found = shutil.which(name) or (
        str(Path(sys.executable).with_name(name)) if Path(sys.executable).with_name(name).exists() else None
    )
    if not found:
        pytest.fail(f"{name} is required for the cluster checks but was not found on PATH: {hint}")
    return found


def kustomize_build_options() -> list[str]:
    """The kustomize flags Argo CD is configured with (argocd-cm kustomize.buildOptions; none is
    expected: the renders below use kustomize's defaults, and a test asserts the option is absent)."""
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    return cm["data"].get("kustomize.buildOptions", "").split()


def kustomization_dirs() -> list[Path]:
    """Every buildable kustomization under apps/ (Components are built through their users)."""
    dirs = []
    for path in sorted(APPS.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            continue
        dirs.append(path.parent)
    return dirs


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "install kubectl (it bundles kustomize)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],  # no flags: kustomize's default load restrictor, like Argo CD
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def bootstrap_manifests(values: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """cluster-bootstrap/manifests/*.yaml rendered like lib.sh's ``render`` does."""
    out = {}
    for path in sorted((BOOTSTRAP / "manifests").glob("*.yaml")):
        text = render_placeholders(path.read_text(), values, str(path.relative_to(REPO)))
        out[path.name] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


@dataclass(frozen=True)
class Container:
    source: str  # e.g. "apps/serving Deployment/primer-serving"
    namespace: str | None
    pod_spec: dict[str, Any]
    spec: dict[str, Any]

    @property
    def argv(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def containers(objects: dict[str, list[dict[str, Any]]]) -> Iterator[Container]:
    for source, docs in objects.items():
        for obj in docs:
            spec = pod_spec(obj)
            if spec is None:
                continue
            for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                yield Container(f"{source} {obj['kind']}/{obj['metadata']['name']}",
                                obj["metadata"].get("namespace"), spec, c)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} among {[o['kind'] + '/' + o['metadata']['name'] for o in objects]}")


def vagrant_machines(vagrantfile_dir: Path) -> list[dict[str, Any]]:
    """Evaluate a Vagrantfile with a recording stand-in for Vagrant (tests/cluster/vagrant_stub.rb)."""
    ruby = require_tool("ruby", "apt-get install ruby (.ci/run installs it)")
    proc = subprocess.run(
        [ruby, str(Path(__file__).with_name("vagrant_stub.rb")), str(vagrantfile_dir / "Vagrantfile")],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"evaluating the Vagrantfile failed:\n{proc.stderr}")
    configs = json.loads(proc.stdout)
    assert len(configs) == 1, "expected exactly one Vagrant.configure block"
    return configs[0]
