"""Session fixtures for the cluster checks: settings and rendered manifests (rendered once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import REPO, bootstrap_manifests, kustomization_dirs, kustomize, versions


@pytest.fixture(scope="session")
def lab() -> dict[str, str]:
    """cluster-bootstrap/versions.env, expanded."""
    return versions()


@pytest.fixture(scope="session")
def apps() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization under apps/, rendered like Argo CD does: {"apps/serving": [objects]}."""
    return {str(d.relative_to(REPO)): kustomize(d) for d in kustomization_dirs()}


@pytest.fixture(scope="session")
def bootstrap(lab: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """cluster-bootstrap/manifests/*.yaml with versions.env placeholders filled in."""
    return {f"cluster-bootstrap/manifests/{k}": v for k, v in bootstrap_manifests(lab).items()}


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
