"""Fixtures for the end-to-end tests: `primer` runs as a user runs it, in a copy of this repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.repo_copy import copy_repo
from tests.support import REPO_ROOT, scrubbed_env


@pytest.fixture()
def loop_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A temporary copy of this repository and an environment without the caller's settings
    (PRIMER_*, MLFLOW_TRACKING_URI): the copy is the repository `primer` works on."""
    repo = copy_repo(REPO_ROOT, tmp_path / "primer")
    # BentoML empties ~/bentoml/prometheus_multiproc_dir when it starts, and MLflow caches in
    # HOME: not the developer's.
    env = scrubbed_env(HOME=str(tmp_path / "home"), BENTOML_HOME=str(tmp_path / "home" / "bentoml"))
    return repo, env
