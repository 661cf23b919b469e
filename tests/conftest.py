"""Session fixtures: real MLflow servers (SQLite and PostgreSQL backends) and PostgreSQL.

Nothing here is mocked: each fixture starts the real program on a free
port on 127.0.0.1 and tears it down at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pg import Postgres, start_postgres
from tests.support import free_port, running_mlflow, scrub_environ

REPO_ROOT = Path(__file__).resolve().parent.parent

# Commits made by tests need an identity, whatever the machine's git config.
os.environ.setdefault("GIT_AUTHOR_NAME", "primer-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@primer.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "primer-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@primer.invalid")
# ...and nothing else from it: a global commit.gpgsign, core.hooksPath or merge.ff would
# change what git does in the tests (the identity above is all they need).
_GIT_CONFIG_DIR = tempfile.mkdtemp(prefix="primer-tests-gitconfig-")
(Path(_GIT_CONFIG_DIR) / "gitconfig").write_text("[safe]\n\tdirectory = *\n")  # clones owned by others
os.environ["GIT_CONFIG_GLOBAL"] = str(Path(_GIT_CONFIG_DIR) / "gitconfig")
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
# Keep MLflow quiet and offline.
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

# Tests never read the caller's configuration, and never act on this checkout:
# a test that forgets to point the code at its own repository gets an empty
# folder (and fails) instead of committing to the developer's main branch.
scrub_environ()
os.environ["PRIMER_REPO_DIR"] = tempfile.mkdtemp(prefix="primer-tests-no-repo-")
PIN_FILE = REPO_ROOT / "promotion" / "model-version.yaml"


def _checkout_fingerprint() -> tuple[str, str]:
    head = subprocess.run(["git", "log", "-1", "--format=%an"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    return PIN_FILE.read_text(), head.strip()


_FINGERPRINT_AT_START = _checkout_fingerprint()


# The fast tier, `python -m pytest -m "not slow"`: every unit test and the quick checks against
# the session's SQLite MLflow (CLI errors, rejected data), in under 45 s on 2 cores. A test is
# `slow` when it uses one of these fixtures (directly or through another), runs on the
# PostgreSQL-backed MLflow, or is marked @pytest.mark.slow itself because it runs the pipeline
# through to a registered version.
SLOW_FIXTURES = {
    "postgres": "starts PostgreSQL (and an MLflow server on it)",
    "promo_mlflow": "the promotion tests' own MLflow server, driven with real git and the forge stand-in",
    "registered": "trains two versions with `primer train` for the serving tests' `bentoml serve`",
    "loop_repo": "runs `primer up` / `primer down` in a copy of the repository",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("any_mlflow_server") == "postgresql"
        if on_postgres or SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any test changed this checkout's pin or committed to it; remove the scratch folders."""
    for scratch in (os.environ["PRIMER_REPO_DIR"], _GIT_CONFIG_DIR):
        shutil.rmtree(scratch, ignore_errors=True)
    pin, author = _checkout_fingerprint()
    if pin != _FINGERPRINT_AT_START[0] or (author == os.environ["GIT_AUTHOR_NAME"] != _FINGERPRINT_AT_START[1]):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nERROR: a test changed this checkout (promotion/model-version.yaml or a commit by the tests)")


@pytest.fixture(autouse=True)
def _no_process_global_tracking_uri() -> Iterator[None]:
    """The code reaches MLflow through explicit clients (ml.tracking.Tracker): no test, and
    nothing a test runs, may leave MLflow's process-global tracking URI set behind it."""
    yield
    if "mlflow" in sys.modules:
        assert not sys.modules["mlflow"].tracking.is_tracking_uri_set(), "MLflow's global tracking URI was left set"


@dataclass
class MlflowServer:
    uri: str
    backend: str  # "sqlite" or "postgresql"
    root: Path


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = start_postgres(free_port())
    try:
        yield pg
    finally:
        pg.stop()


def _serve(backend_uri: str, backend: str, root: Path) -> Iterator[MlflowServer]:
    with running_mlflow(root, backend_uri) as uri:
        yield MlflowServer(uri=uri, backend=backend, root=root)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` with a SQLite backend and local artifacts."""
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    yield from _serve(f"sqlite:///{root / 'mlflow.db'}", "sqlite", root)


@pytest.fixture(scope="session")
def mlflow_server_pg(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` with a PostgreSQL backend (as in the cluster)."""
    root = tmp_path_factory.mktemp("mlflow-pg")
    yield from _serve(postgres.createdb("mlflow"), "postgresql", root)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def any_mlflow_server(request: pytest.FixtureRequest) -> MlflowServer:
    """Runs a test once per backend the project uses."""
    name = "mlflow_server" if request.param == "sqlite" else "mlflow_server_pg"
    return request.getfixturevalue(name)
