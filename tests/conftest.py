"""Session fixtures: real MLflow servers (SQLite and PostgreSQL backends) and PostgreSQL.

Nothing here is mocked: each fixture starts the real program on a free
port on 127.0.0.1 and tears it down at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml.servers import free_port, start_mlflow_server, stop_process
from tests.pg import Postgres, start_postgres

REPO_ROOT = Path(__file__).resolve().parent.parent

# Commits made by tests need an identity, whatever the machine's git config.
os.environ.setdefault("GIT_AUTHOR_NAME", "primer-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@primer.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "primer-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@primer.invalid")
# Keep MLflow quiet and offline.
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


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
    port = free_port()
    proc = start_mlflow_server(backend_uri, root / "artifacts", port, root / "mlflow.log")
    try:
        yield MlflowServer(uri=f"http://127.0.0.1:{port}", backend=backend, root=root)
    finally:
        stop_process(proc)


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
