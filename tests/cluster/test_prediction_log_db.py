"""The prediction log's database in the lab, for real: apps/mlflow's PostSync Job runs with its
exact command, args and env (the Secrets' keys given test values, the Service name `postgres`
mapped to a local PostgreSQL), twice; then the service's own writer (bentos.prediction_log)
records an answer through the URL platform.sh assembles (its line evaluated by bash), as the
role the Job made, which owns its database and may not open MLflow's."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from contract import prediction_log as schema
from tests.cluster.support import REPO, find
from tests.pg import pg_bindir

MLFLOW_DB = "mlflow_for_log_test"  # stands in for MLflow's database (POSTGRES_DB)


def _job_container(apps) -> dict[str, Any]:
    job = find(apps["apps/mlflow"], "Job", "prediction-log-db")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def run_job(apps, postgres, lab, password: str, mlflow_db: str = MLFLOW_DB) -> subprocess.CompletedProcess[str]:
    """The Job's container as a local process: Secret keys -> test values, `postgres` -> 127.0.0.1."""
    container = _job_container(apps)
    secrets = {
        ("postgres-credentials", "POSTGRES_USER"): "postgres",
        ("postgres-credentials", "POSTGRES_PASSWORD"): "unused-locally",  # trust auth locally
        ("postgres-credentials", "POSTGRES_DB"): mlflow_db,
        ("prediction-log-db", "PREDICTION_LOG_USER"): lab["PREDICTION_LOG_USER"],
        ("prediction-log-db", "PREDICTION_LOG_DB"): lab["PREDICTION_LOG_DB"],
        ("prediction-log-db", "PREDICTION_LOG_PASSWORD"): password,
    }
    env: dict[str, str] = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secrets[(ref["name"], ref["key"])] if ref else item["value"]
    assert (env["PGHOST"], env["PGPORT"]) == ("postgres", "5432")
    env.update(PGHOST="127.0.0.1", PGPORT=str(postgres.port))
    env["PATH"] = f"{pg_bindir()}:{os.environ['PATH']}"  # psql, as in the postgres image
    return subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")


def platform_url(lab, password: str) -> str:
    """PRIMER_PREDICTION_LOG exactly as platform.sh assembles it (its line, run by bash)."""
    script = (REPO / "cluster-bootstrap" / "platform.sh").read_text()
    (line,) = re.findall(r"^log_url=.*$", script, flags=re.M)
    env = {"PATH": os.environ["PATH"], "log_password": password,
           **{k: lab[k] for k in ("PREDICTION_LOG_USER", "PREDICTION_LOG_DB", "PREDICTION_LOG_HOST")}}
    out = subprocess.run(["bash", "-euc", f'{line}\nprintf %s "$log_url"'], env=env, capture_output=True,
                         text=True, timeout=10, check=True)
    return out.stdout


@pytest.fixture(scope="module")
def log_database(apps, postgres, lab):
    postgres.createdb(MLFLOW_DB)
    first = run_job(apps, postgres, lab, "a" * 32)
    assert first.returncode == 0, first.stderr
    # Every sync runs it again: nothing fails, the password follows the Secret.
    admin = sa.create_engine(postgres.uri)
    with admin.connect() as conn:
        before = conn.execute(sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"),
                              {"r": lab["PREDICTION_LOG_USER"]}).scalar_one()
    second = run_job(apps, postgres, lab, "b" * 32)
    assert second.returncode == 0, second.stderr
    with admin.connect() as conn:
        after = conn.execute(sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"),
                             {"r": lab["PREDICTION_LOG_USER"]}).scalar_one()
    assert before and after and before != after, "the role's password is not the Secret's"
    yield admin
    admin.dispose()


def test_the_job_makes_an_unprivileged_role_owning_its_own_database(log_database, lab) -> None:
    with log_database.connect() as conn:
        role = conn.execute(sa.text("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
                                    "WHERE rolname = :r"), {"r": lab["PREDICTION_LOG_USER"]}).one()
        owner = conn.execute(sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"),
                             {"d": lab["PREDICTION_LOG_DB"]}).scalar_one()
    assert tuple(role) == (False, False, False, True)
    assert owner == lab["PREDICTION_LOG_USER"]
    assert lab["PREDICTION_LOG_DB"] != MLFLOW_DB


def test_the_service_writes_through_the_url_platform_sh_builds(log_database, postgres, lab) -> None:
    from bentos.prediction_log import PredictionLog

    url = platform_url(lab, "c" * 32)
    assert url.startswith("postgresql+psycopg://")  # psycopg 3, the driver in the image
    host = f"@{lab['PREDICTION_LOG_HOST']}:5432/"
    assert host in url
    # Trust auth locally: the password is not checked, the role and its rights are.
    local = url.replace(host, f"@127.0.0.1:{postgres.port}/")
    writer = PredictionLog(local)
    writer.record({schema.MODEL_VERSION: 9003,  # no version the loop test (same server) serves
                   schema.AS_OF: dt.date(2024, 3, 1), schema.P_UP: 0.55,
                   schema.STALE: False, schema.FEATURES: json.dumps({"ret_1": 0.01}),
                   schema.PUBLISHED_AT: dt.datetime(2026, 1, 1, tzinfo=dt.UTC), schema.HOST: "pod", schema.PID: 1})
    assert writer.flush(), writer.last_error
    engine = sa.create_engine(local)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {schema.TABLE_NAME} "
                                        f"WHERE {schema.MODEL_VERSION} = 9003"))
            assert rows.scalar_one() == 1
            assert conn.execute(sa.text("SELECT current_user")).scalar_one() == lab["PREDICTION_LOG_USER"]
    finally:
        engine.dispose()
        if writer._engine is not None:
            writer._engine.dispose()


def test_the_log_role_cannot_open_mlflows_database(log_database, postgres, lab) -> None:
    other = sa.create_engine(f"postgresql+psycopg://{lab['PREDICTION_LOG_USER']}@127.0.0.1:{postgres.port}/{MLFLOW_DB}")
    try:
        with pytest.raises(sa.exc.OperationalError, match="permission denied for database"):
            other.connect().close()
    finally:
        other.dispose()
